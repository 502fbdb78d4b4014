"""Extractive QA: SQuAD v1.1 (Rajpurkar et al. 2016) and v2.0 (Rajpurkar et al. 2018), official JSON files
(``train-v1.1.json`` / ``dev-v1.1.json``, ``train-v2.0.json`` / ``dev-v2.0.json``).

Long contexts are split into overlapping windows (default max length 384, stride 128 overlapping tokens)
with the fast tokenizer's ``return_overflowing_tokens`` / ``stride`` / ``truncation="only_second"``; answers
are never truncated: a window that does not contain the whole answer points at [CLS] (index 0). Predictions
are decoded n-best style (top-20 start and end logits per window, end >= start, at most 30 tokens, text cut
from the context via the offset mapping); for v2.0 an answer is returned only if its score beats the [CLS]
"no answer" score by the threshold, tuned on dev like the official evaluation's ``best_f1`` search.
EM / F1 use the official script's normalisation (``metrics.normalize_answer``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from megaprompt.tasks import metrics as M
from megaprompt.tasks.base import BaseTask, EncodedSplit, at
from megaprompt.tasks.encoding import require_fast
from megaprompt.tasks.io import DataError, read_json

logger = logging.getLogger(__name__)


def parse_squad(data: Any, where: str, version_2: bool) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{where}: expected SQuAD JSON with a top-level 'data' list")
    out = []
    for a, article in enumerate(data["data"]):
        with at(f"{where}: data[{a}]"):
            paragraphs = article.get("paragraphs", [])
            _check_type(paragraphs, list, f"{where}: data[{a}].paragraphs")
        for p, para in enumerate(paragraphs):
            w = f"{where}: data[{a}].paragraphs[{p}]"
            with at(w):
                out.extend(_parse_paragraph(para, article.get("title", ""), w, version_2))
    return out


def _check_type(value: Any, kind: type, w: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{w}: expected {kind.__name__}, got {type(value).__name__}")


def _parse_paragraph(para: Any, title: Any, w: str, version_2: bool) -> list[dict[str, Any]]:
    """The questions of one SQuAD paragraph; answers must sit at their ``answer_start`` in the context."""
    out = []
    if not isinstance(para, dict) or "context" not in para or "qas" not in para:
        raise DataError(f"{w}: missing 'context' or 'qas'")
    context = para["context"]
    _check_type(context, str, f"{w}.context")
    _check_type(para["qas"], list, f"{w}.qas")
    for qa in para["qas"]:
        if not isinstance(qa, dict) or "id" not in qa or "question" not in qa:
            raise DataError(f"{w}: a question lacks 'id' or 'question'")
        _check_type(qa["question"], str, f"{w}: question {qa['id']!r}")
        answers = qa.get("answers", [])
        _check_type(answers, list, f"{w}: question {qa['id']!r} answers")
        impossible = bool(qa.get("is_impossible", False))
        for ans in answers:
            _check_type(ans.get("text") if isinstance(ans, dict) else ans, str, f"{w}: an answer's text")
            s = int(ans["answer_start"])
            if s < 0 or context[s:s + len(ans["text"])] != ans["text"]:
                raise DataError(f"{w}: question {qa['id']}: answer {ans['text']!r} is not at "
                                f"character {s} of the context")
        if impossible and not version_2:
            raise DataError(f"{w}: question {qa['id']} is unanswerable; use task squad_v2")
        out.append({"idx": qa["id"], "id": str(qa["id"]), "title": str(title),
                    "question": qa["question"], "context": context,
                    "answers": [{"text": x["text"], "answer_start": int(x["answer_start"])} for x in answers],
                    "is_impossible": impossible,
                    "label": True if (answers or impossible) else None})
    return out


class SQuAD(BaseTask):
    name = "squad"
    head = "span"
    label_names: list[str] = []
    metric = "f1"
    version_2 = False
    splits = {"train": "train-v1.1.json|train.json", "dev": "dev-v1.1.json|dev.json"}
    hf_dataset = ("squad", None)
    hf_splits = {"train": "train", "dev": "validation"}
    source = "SQuAD v1.1 (Rajpurkar et al. 2016), official evaluation script normalisation"
    file_format = "official SQuAD JSON: train-v1.1.json / dev-v1.1.json"

    def __init__(self, doc_stride: int = 128, max_query_len: int = 64, n_best: int = 20,
                 max_answer_len: int = 30, null_threshold: float = 0.0) -> None:
        self.doc_stride, self.max_query_len = doc_stride, max_query_len
        self.n_best, self.max_answer_len = n_best, max_answer_len
        self.null_threshold = null_threshold     # v2: predict "" unless best span beats [CLS] by this

    def cache_options(self) -> dict[str, Any]:
        return {"doc_stride": self.doc_stride, "max_query_len": self.max_query_len}

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        return parse_squad(read_json(path), str(path), self.version_2)

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            a = r["answers"]
            answers = [{"text": t, "answer_start": s} for t, s in zip(a["text"], a["answer_start"])]
            out.append({"idx": r["id"], "id": r["id"], "title": r.get("title", ""), "question": r["question"],
                        "context": r["context"], "answers": answers, "is_impossible": not answers,
                        "label": True})
        return out

    # ------------------------------------------------------------------ encoding
    def _budget(self, max_seq_len: int, n_special: int) -> tuple[int, int]:
        q_budget = min(self.max_query_len, max(8, (max_seq_len - n_special) // 2))
        stride = min(self.doc_stride, (max_seq_len - n_special - q_budget) // 2)   # windows must advance
        if stride < 1:
            raise ValueError(f"{self.name}: max_seq_len={max_seq_len} is too short for question + context windows")
        if stride < self.doc_stride:
            logger.warning("%s: max_seq_len=%d leaves room for a stride of %d (asked %d)", self.name,
                           max_seq_len, stride, self.doc_stride)
        return q_budget, stride

    def _questions(self, tokenizer: Any, examples: list[dict[str, Any]], budget: int) -> list[str]:
        questions = [e["question"].lstrip() for e in examples]
        enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        n_cut = 0
        for i, offs in enumerate(enc["offset_mapping"]):
            if len(offs) > budget:
                questions[i] = questions[i][:offs[budget - 1][1]]
                n_cut += 1
        if n_cut:
            logger.warning("%s: truncated %d of %d questions to %d tokens", self.name, n_cut, len(questions), budget)
        return questions

    def encode(self, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> EncodedSplit:
        require_fast(tokenizer, self.name)
        n_special = tokenizer.num_special_tokens_to_add(pair=True)
        q_budget, stride = self._budget(max_seq_len, n_special)
        questions = self._questions(tokenizer, examples, q_budget)
        pad_right = getattr(tokenizer, "padding_side", "right") == "right"
        if not pad_right:
            raise ValueError(f"{self.name}: left-padding tokenizers are not supported for span extraction")
        enc = tokenizer(questions, [e["context"] for e in examples], truncation="only_second",
                        max_length=max_seq_len, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        columns = {k: enc[k] for k in keys}
        all_offsets = enc["offset_mapping"]
        none = (-1, -1)
        feats: list[dict[str, Any]] = []
        for i, ex_i in enumerate(enc["overflow_to_sample_mapping"]):
            e = examples[ex_i]
            seq = enc.sequence_ids(i)
            n = len(seq)
            c0 = seq.index(1)
            c1 = n - 1 - seq[::-1].index(1)
            offs = all_offsets[i]
            # context tokens keep (char start, char end); everything else (-1, -1)
            offsets = [none] * c0 + list(offs[c0:c1 + 1]) + [none] * (n - 1 - c1)
            f: dict[str, Any] = {k: columns[k][i] for k in keys}
            f["offset_mapping"], f["example_index"] = offsets, ex_i
            if e["label"] is not None:
                f["start_positions"], f["end_positions"] = self._positions(e, offsets, c0, c1)
            feats.append(f)
        covered = {f["example_index"] for f in feats if f.get("start_positions", 0) > 0}
        n_missing = sum(1 for i, e in enumerate(examples) if e["answers"] and i not in covered)
        if n_missing:
            logger.warning("%s: %d answers are not token-aligned in any window (tokenizer splits)", self.name,
                           n_missing)
        logger.info("%s: %d examples -> %d windows (max_seq_len=%d, stride=%d)", self.name, len(examples),
                    len(feats), max_seq_len, stride)
        return EncodedSplit(features=feats, examples=examples, meta={"task": self.name, "stride": stride})

    @staticmethod
    def _positions(e: dict[str, Any], offsets: Sequence[Sequence[int]], c0: int, c1: int) -> tuple[int, int]:
        """Token start/end of the first answer inside this window (context tokens c0..c1), else (0, 0) = [CLS]."""
        if not e["answers"]:
            return 0, 0
        a = e["answers"][0]
        s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
        if offsets[c0][0] > s_char or offsets[c1][1] < e_char:
            return 0, 0
        start = c0
        while start <= c1 and offsets[start][1] <= s_char:
            start += 1
        end = c1
        while end >= c0 and offsets[end][0] >= e_char:
            end -= 1
        return (start, end) if start <= end else (0, 0)

    # ------------------------------------------------------------------ decoding
    def decode(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[tuple[str, float]]:
        """Per example: (best non-null answer text, null score - best span score)."""
        if len(outputs) != len(split.features):
            raise ValueError(f"got outputs for {len(outputs)} features, expected {len(split.features)}")
        n = len(split.examples)
        best: list[tuple[float, str]] = [(-np.inf, "")] * n
        null: list[float] = [np.inf] * n
        for f, out in zip(split.rows(["input_ids", "example_index", "offset_mapping"]), outputs):
            logits = np.asarray(out, dtype=np.float64)
            L = len(f["input_ids"])
            start, end = logits[:L, 0], logits[:L, 1]
            i = f["example_index"]
            null[i] = min(null[i], start[0] + end[0])
            offsets = f["offset_mapping"]
            context = split.examples[i]["context"]
            k = min(self.n_best, L)
            top_s = np.argpartition(-start, k - 1)[:k]
            top_e = np.argpartition(-end, k - 1)[:k]
            for s in top_s:
                if offsets[s][0] < 0:
                    continue
                for t in top_e:
                    if t < s or t - s + 1 > self.max_answer_len or offsets[t][0] < 0:
                        continue
                    score = start[s] + end[t]
                    if score > best[i][0]:
                        best[i] = (score, context[offsets[s][0]:offsets[t][1]])
        return [(text, null[i] - score) for i, (score, text) in enumerate(best)]

    def predict(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[str]:
        decoded = self.decode(outputs, split)
        if not self.version_2:
            return [text for text, _ in decoded]
        return [text if diff < self.null_threshold else "" for text, diff in decoded]

    def gold(self, split: EncodedSplit) -> dict[str, list[str]]:
        return {e["id"]: [a["text"] for a in e["answers"]] for e in split.examples}

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        return M.squad_scores({e["id"]: p for e, p in zip(split.examples, predictions)}, self.gold(split))


class SQuADv2(SQuAD):
    name = "squad_v2"
    version_2 = True
    splits = {"train": "train-v2.0.json|train.json", "dev": "dev-v2.0.json|dev.json"}
    hf_dataset = ("squad_v2", None)
    source = "SQuAD v2.0 (Rajpurkar et al. 2018), official evaluation script (best_f1 threshold search)"
    file_format = "official SQuAD JSON: train-v2.0.json / dev-v2.0.json"

    def evaluate(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> dict[str, float]:
        """EM / F1 at the no-answer threshold that maximises dev F1 (kept in ``self.null_threshold``)."""
        decoded = self.decode(outputs, split)
        gold = self.gold(split)
        ids = [e["id"] for e in split.examples]
        self.null_threshold = best_threshold(ids, decoded, gold)
        preds = [t if d < self.null_threshold else "" for t, d in decoded]
        scores = M.squad_scores(dict(zip(ids, preds)), gold)
        has = [e["id"] for e in split.examples if e["answers"]]
        no = [e["id"] for e in split.examples if not e["answers"]]
        out = {"em": 100 * scores["em"], "f1": 100 * scores["f1"], "threshold": float(self.null_threshold)}
        pmap = dict(zip(ids, preds))
        if has:
            out["has_ans_f1"] = 100 * M.squad_scores(pmap, {q: gold[q] for q in has})["f1"]
        if no:
            out["no_ans_f1"] = 100 * M.squad_scores(pmap, {q: gold[q] for q in no})["f1"]
        return out


def best_threshold(ids: Sequence[str], decoded: Sequence[tuple[str, float]], gold: dict[str, list[str]]) -> float:
    """Threshold on (null score - best span score) maximising total F1: sweep candidates in sorted order
    like the official v2.0 script's ``find_best_thresh`` (answering when diff < threshold)."""
    f1_span = [M.max_over_gold(M.squad_f1, t, gold[q]) for q, (t, _) in zip(ids, decoded)]
    f1_null = [M.max_over_gold(M.squad_f1, "", gold[q]) for q in ids]
    diffs = np.array([d for _, d in decoded], dtype=np.float64)
    order = np.argsort(diffs, kind="mergesort")
    total = float(sum(f1_null))                  # threshold below every diff: all "no answer"
    best, best_t = total, float(diffs[order[0]]) - 1e-6 if len(order) else 0.0
    for rank, j in enumerate(order):
        total += f1_span[j] - f1_null[j]
        nxt = diffs[order[rank + 1]] if rank + 1 < len(order) else diffs[j] + 2e-6
        if total > best and nxt > diffs[j]:
            best, best_t = total, float((diffs[j] + nxt) / 2)
    return best_t
