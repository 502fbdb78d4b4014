"""SuperGLUE (Wang et al. 2019, https://super.gluebenchmark.com) from the official jsonl files
``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (test is unlabeled), or from the Hugging Face ``super_glue``
data set when no data_dir is given.

Inputs follow the P-Tuning v2 code (Liu et al. 2022, github.com/THUDM/P-tuning-v2, tasks/superglue):
BoolQ (question, passage); CB / RTE (premise, hypothesis); COPA as 2-way multiple choice over
("<premise> because|so", choice); WiC with the target word marked ``*word*`` at its character spans in
both sentences, each prefixed by "word:"; WSC with the pronoun (span2) marked ``*...*`` and the candidate
(span1) marked ``[...]`` in the text, paired with span1's text; MultiRC as one binary example per answer
(paragraph, "question answer"); ReCoRD as one binary example per candidate entity (passage, query with
the entity filled in), the highest-scoring entity being the answer.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from megaprompt.tasks import metrics as M
from megaprompt.tasks.base import BaseTask, EncodedSplit, at, check_label, require, stack_outputs
from megaprompt.tasks.encoding import encode_texts
from megaprompt.tasks.io import DataError, read_jsonl, read_table
from megaprompt.tasks.sentence import SentenceTask

logger = logging.getLogger(__name__)

SPLITS = {"train": "train.jsonl", "dev": "val.jsonl|dev.jsonl|validation.jsonl", "test": "test.jsonl"}
SOURCE = "SuperGLUE (Wang et al. 2019); inputs as in P-Tuning v2 (Liu et al. 2022)"


def _where(where: str, row: dict[str, Any], i: int) -> str:
    return f"{where}:{row.get('_line', i + 1)}"


def _label(row: dict[str, Any], names: Sequence[str], w: str, split: str) -> str | None:
    if row.get("label") is None:
        if split == "test":
            return None
        raise DataError(f"{w}: missing field 'label' in a {split} example")
    return check_label(row["label"], names, w)


def _hf_labels(rows: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """HF ClassLabel ints (-1 = unlabeled test) back to label names."""
    for r in rows:
        if isinstance(r.get("label"), int) and not isinstance(r["label"], bool):
            r["label"] = names[r["label"]] if r["label"] >= 0 else None
    return rows


def mark_chars(text: str, start: int, end: int, left: str = "*", right: str = "*") -> str:
    return f"{text[:start]}{left}{text[start:end]}{right}{text[end:]}"


class _SuperGluePair(SentenceTask):
    """Sentence-pair SuperGLUE tasks; subclasses give ``fields`` or override ``make``."""

    splits = SPLITS
    source = SOURCE
    file_format = "SuperGLUE jsonl: train.jsonl / val.jsonl / test.jsonl"
    fields: tuple[str, str] = ("", "")

    def make(self, row: dict[str, Any], w: str) -> tuple[str, str | None]:
        require(row, self.fields, w)
        return str(row[self.fields[0]]), str(row[self.fields[1]])

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        return self.parse_rows(read_jsonl(path), str(path), split)

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            w = _where(where, r, i)
            with at(w):
                text, pair = self.make(r, w)
                out.append({"idx": r.get("idx", i), "text": text, "text_pair": pair,
                            "label": _label(r, self.label_names, w, split)})
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        return self.parse_rows(_hf_labels(rows, self.label_names), f"super_glue/{self.name}:{split}", split)


class BoolQ(_SuperGluePair):
    name = "boolq"
    label_names = ["False", "True"]
    fields = ("question", "passage")
    hf_dataset = ("super_glue", "boolq")


class CB(_SuperGluePair):
    name = "cb"
    label_names = ["entailment", "contradiction", "neutral"]
    metrics = ("accuracy", "macro_f1")
    fields = ("premise", "hypothesis")
    hf_dataset = ("super_glue", "cb")


class RTE(_SuperGluePair):
    """SuperGLUE RTE jsonl; also reads the GLUE RTE TSV layout (index, sentence1, sentence2, label)."""

    name = "rte"
    label_names = ["entailment", "not_entailment"]
    fields = ("premise", "hypothesis")
    splits = {"train": "train.jsonl|train.tsv", "dev": "val.jsonl|dev.jsonl|dev.tsv", "test": "test.jsonl|test.tsv"}
    hf_dataset = ("super_glue", "rte")

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        if path.suffix == ".tsv":
            rows = read_table(path, required=("sentence1", "sentence2"))
            for r in rows:
                r["premise"], r["hypothesis"] = r.pop("sentence1"), r.pop("sentence2")
                r["idx"] = r.pop("index", None)
            return self.parse_rows(rows, str(path), split)
        return super().read(path, split)


class WiC(_SuperGluePair):
    name = "wic"
    label_names = ["False", "True"]
    hf_dataset = ("super_glue", "wic")

    def make(self, row: dict[str, Any], w: str) -> tuple[str, str | None]:
        require(row, ("word", "sentence1", "sentence2", "start1", "end1", "start2", "end2"), w)
        s1, s2 = row["sentence1"], row["sentence2"]
        for s, a, b in ((s1, row["start1"], row["end1"]), (s2, row["start2"], row["end2"])):
            if not (0 <= int(a) < int(b) <= len(s)):
                raise DataError(f"{w}: target span [{a}, {b}) outside its sentence of length {len(s)}")
        word = row["word"]
        return (f"{word}: {mark_chars(s1, int(row['start1']), int(row['end1']))}",
                f"{word}: {mark_chars(s2, int(row['start2']), int(row['end2']))}")


class WSC(_SuperGluePair):
    name = "wsc"
    label_names = ["False", "True"]
    hf_dataset = ("super_glue", "wsc.fixed")

    def make(self, row: dict[str, Any], w: str) -> tuple[str, str | None]:
        require(row, ("text",), w)
        t = row.get("target", row)   # jsonl nests spans under "target"; HF rows are flat
        require(t, ("span1_index", "span1_text", "span2_index", "span2_text"), w)
        words = row["text"].split()
        spans = [(int(t["span1_index"]), len(t["span1_text"].split()), "[", "]"),
                 (int(t["span2_index"]), len(t["span2_text"].split()), "*", "*")]
        for start, n, left, right in spans:
            if not 0 <= start < len(words) or start + n > len(words):
                raise DataError(f"{w}: span at word {start} (+{n}) is outside the text's {len(words)} words")
            words[start] = left + words[start]
            words[start + n - 1] = words[start + n - 1] + right
        return " ".join(words), str(t["span1_text"])


class COPA(BaseTask):
    """2-way multiple choice; each choice is encoded as ("<premise> because|so", choice)."""

    name = "copa"
    head = "mc"
    label_names = ["0", "1"]
    metric = "accuracy"
    splits = SPLITS
    source = SOURCE
    file_format = "SuperGLUE jsonl: premise, choice1, choice2, question (cause|effect), label"
    hf_dataset = ("super_glue", "copa")

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        return self.parse_rows(read_jsonl(path), str(path), split)

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            w = _where(where, r, i)
            with at(w):
                require(r, ("premise", "choice1", "choice2", "question"), w)
                if r["question"] not in ("cause", "effect"):
                    raise DataError(f"{w}: question must be 'cause' or 'effect', got {r['question']!r}")
                label = _label(r, self.label_names, w, split)
                out.append({"idx": r.get("idx", i), "premise": str(r["premise"]), "question": r["question"],
                            "choices": [str(r["choice1"]), str(r["choice2"])],
                            "label": None if label is None else int(label)})
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        for r in rows:
            if r.get("label", -1) < 0:
                r["label"] = None
        return self.parse_rows(rows, f"super_glue/copa:{split}", split)

    def encode(self, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> EncodedSplit:
        n_choices = len(examples[0]["choices"]) if examples else 2
        firsts, seconds = [], []
        for e in examples:
            joiner = "because" if e["question"] == "cause" else "so"
            for c in e["choices"]:
                firsts.append(f"{e['premise']} {joiner}")
                seconds.append(c)
        flat = encode_texts(tokenizer, firsts, seconds, max_seq_len, self.name)
        feats = []
        for i, e in enumerate(examples):
            group = flat[i * n_choices:(i + 1) * n_choices]
            f: dict[str, Any] = {k: [g[k] for g in group] for k in group[0]}
            f["example_index"] = i
            if e["label"] is not None:
                f["labels"] = int(e["label"])
            feats.append(f)
        return EncodedSplit(features=feats, examples=examples, meta={"task": self.name, "num_choices": n_choices})

    def predict(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[Any]:
        return [int(i) for i in stack_outputs(outputs, len(split.features)).argmax(-1)]

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        return {"accuracy": M.accuracy([int(e["label"]) for e in split.examples], predictions)}


class MultiRC(_SuperGluePair):
    """One binary example per answer option; F1a over all options, EM over questions."""

    name = "multirc"
    label_names = ["0", "1"]
    metrics = ("f1a", "em")
    hf_dataset = ("super_glue", "multirc")

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            w = _where(where, r, i)
            with at(w):
                require(r, ("passage",), w)
                p = r["passage"]
                require(p, ("text", "questions"), w)
                for q in p["questions"]:
                    require(q, ("question", "answers"), w)
                    for a in q["answers"]:
                        require(a, ("text",), w)
                        idx = {"paragraph": r.get("idx", i), "question": q.get("idx"), "answer": a.get("idx")}
                        out.append({"idx": idx,
                                    "question_id": f"{r.get('idx', i)}-{q.get('idx')}",
                                    "text": str(p["text"]), "text_pair": f"{q['question']} {a['text']}",
                                    "label": _label(a, self.label_names, w, split)})
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            lab = r.get("label", -1)
            out.append({"idx": r["idx"], "question_id": f"{r['idx']['paragraph']}-{r['idx']['question']}",
                        "text": r["paragraph"], "text_pair": f"{r['question']} {r['answer']}",
                        "label": self.label_names[lab] if lab is not None and lab >= 0 else None})
        return out

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        gold = [int(e["label"]) for e in split.examples]
        return M.multirc_scores([e["question_id"] for e in split.examples], gold, [int(p) for p in predictions])


class ReCoRD(BaseTask):
    """Per query, one binary (passage, filled-in query) feature per candidate entity; argmax of P(1) wins."""

    name = "record"
    head = "cls"
    label_names = ["0", "1"]
    metric = "f1"
    splits = SPLITS
    source = SOURCE + "; ReCoRD (Zhang et al. 2018) official evaluation"
    file_format = "SuperGLUE jsonl: passage {text, entities[start,end]}, qas [{query, answers}]"
    hf_dataset = ("super_glue", "record")

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        return self.parse_rows(read_jsonl(path), str(path), split)

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            w = _where(where, r, i)
            with at(w):
                require(r, ("passage", "qas"), w)
                require(r["passage"], ("text",), w)
                text = r["passage"]["text"]
                if not isinstance(text, str):
                    raise DataError(f"{w}: passage text must be a string")
                ents: list[str] = []
                for e in r["passage"].get("entities", []):
                    s = text[int(e["start"]):int(e["end"]) + 1]   # ReCoRD entity ends are inclusive
                    if s not in ents:
                        ents.append(s)
                for q in r["qas"]:
                    require(q, ("query",), w)
                    answers = [str(a["text"]) for a in q.get("answers", [])]
                    if not answers and split != "test":
                        raise DataError(f"{w}: query {q.get('idx')} has no answers in a {split} example")
                    out.append({"idx": q.get("idx", len(out)), "passage": text.replace("@highlight\n", "- "),
                                "query": str(q["query"]), "entities": ents, "answers": answers or None,
                                "label": answers or None})
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        return [{"idx": r["idx"]["query"], "passage": r["passage"].replace("@highlight\n", "- "), "query": r["query"],
                 "entities": list(dict.fromkeys(r["entities"])), "answers": r["answers"] or None,
                 "label": r["answers"] or None} for r in rows]

    def encode(self, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> EncodedSplit:
        texts, pairs, owners = [], [], []
        for i, e in enumerate(examples):
            for ent in e["entities"]:
                texts.append(e["passage"])
                pairs.append(e["query"].replace("@placeholder", ent))
                owners.append((i, ent))
        feats = encode_texts(tokenizer, texts, pairs, max_seq_len, self.name)
        for f, (i, ent) in zip(feats, owners):
            f["example_index"], f["entity"] = i, ent
            if examples[i]["answers"] is not None:
                f["labels"] = int(ent in examples[i]["answers"])
        return EncodedSplit(features=feats, examples=examples, meta={"task": self.name})

    def predict(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[Any]:
        logits = stack_outputs(outputs, len(split.features)).reshape(len(split.features), -1)
        score = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
        best: dict[int, tuple[float, str]] = {}
        for f, s in zip(split.rows(["example_index", "entity"]), score):
            i = f["example_index"]
            if i not in best or s > best[i][0]:
                best[i] = (float(s), f["entity"])
        return [best[i][1] if i in best else "" for i in range(len(split.examples))]

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        golds = {i: e["answers"] for i, e in enumerate(split.examples)}
        return record_metrics(dict(enumerate(predictions)), golds)


def record_metrics(preds: dict[Any, str], golds: dict[Any, Sequence[str]]) -> dict[str, float]:
    s = M.record_scores(preds, golds)
    return {"f1": s["f1"], "em": s["em"]}
