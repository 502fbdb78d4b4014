"""GLUE (Wang et al. 2018, https://gluebenchmark.com) from the TSV files as distributed by the GLUE download
script (``train.tsv`` / ``dev.tsv`` / ``test.tsv``; MNLI ``dev_matched.tsv`` / ``dev_mismatched.tsv`` /
``test_matched.tsv`` / ``test_mismatched.tsv``), read like the GLUE baseline / transformers' ``glue.py``
processors (tab separated, no quoting; CoLA train/dev have no header), or from Hugging Face ``glue``.

Metrics are GLUE's: CoLA Matthews correlation; MRPC / QQP accuracy and F1; STS-B Pearson / Spearman
(regression); the rest accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from megaprompt.tasks.base import at, check_label, finite_number, require
from megaprompt.tasks.io import DataError, read_table
from megaprompt.tasks.sentence import SentenceTask

SOURCE = "GLUE (Wang et al. 2018)"


class _Glue(SentenceTask):
    splits = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    source = SOURCE
    tsv_cols: tuple[str, str | None, str] = ("sentence1", "sentence2", "label")   # text, pair, label
    hf_cols: tuple[str, str | None] = ("sentence1", "sentence2")
    id_col = "index"

    @property
    def file_format(self) -> str:  # type: ignore[override]
        t, p, lab = self.tsv_cols
        cols = ", ".join(c for c in (t, p, lab) if c)
        return f"GLUE TSV ({', '.join(sorted(set(self.splits.values())))}); columns {cols}"

    def read_rows(self, path: Path, split: str) -> list[dict[str, Any]]:
        text, pair, _ = self.tsv_cols
        return read_table(path, delimiter="\t", required=tuple(c for c in (text, pair) if c))

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        return self.parse_rows(self.read_rows(path, split), str(path), split)

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str,
                   cols: tuple[str, str | None, str] | None = None) -> list[dict[str, Any]]:
        text, pair, lab = cols or self.tsv_cols
        out = []
        is_test = split.startswith("test")
        for i, r in enumerate(rows):
            w = f"{where}:{r.get('_line', i + 1)}"
            with at(w):
                label: Any = None
                raw = r.get(lab)
                if raw is None or raw == "" or raw == -1:
                    if not is_test:
                        raise DataError(f"{w}: missing label column {lab!r} in a {split} example")
                elif self.head == "reg":
                    label = finite_number(raw, w)
                else:
                    label = check_label(raw, self.label_names, w)
                require(r, [c for c in (text, pair) if c], w)
                out.append({"idx": r.get(self.id_col, i), "text": str(r[text]),
                            "text_pair": str(r[pair]) if pair else None, "label": label})
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        for r in rows:
            lab = r.get("label")
            if self.head == "cls" and isinstance(lab, int):
                r["label"] = self.label_names[lab] if lab >= 0 else None
        text, pair = self.hf_cols
        return self.parse_rows(rows, f"glue/{self.hf_dataset[1] if self.hf_dataset else self.name}:{split}", split,
                               cols=(text, pair, "label"))


class CoLA(_Glue):
    name = "cola"
    label_names = ["0", "1"]
    metrics = ("mcc", "accuracy")
    hf_dataset = ("glue", "cola")
    hf_cols = ("sentence", None)
    tsv_cols = ("sentence", None, "label")

    def read_rows(self, path: Path, split: str) -> list[dict[str, Any]]:
        if split == "test":   # test.tsv: header "index<TAB>sentence"
            return read_table(path, delimiter="\t", required=("sentence",))
        rows = read_table(path, delimiter="\t", header=False)   # source, label, original label, sentence
        if len(rows[0]) - 1 != 4:
            raise DataError(f"{path}: expected CoLA's 4 columns (source, label, author label, sentence)")
        return [{"sentence": r["3"], "label": r["1"], "_line": r["_line"]} for r in rows]


class SST2(_Glue):
    name = "sst2"
    label_names = ["0", "1"]
    hf_dataset = ("glue", "sst2")
    hf_cols = ("sentence", None)
    tsv_cols = ("sentence", None, "label")


class MRPC(_Glue):
    name = "mrpc"
    label_names = ["0", "1"]
    metrics = ("accuracy", "f1")
    hf_dataset = ("glue", "mrpc")
    tsv_cols = ("#1 String", "#2 String", "Quality")


class QQP(_Glue):
    name = "qqp"
    label_names = ["0", "1"]
    metrics = ("accuracy", "f1")
    hf_dataset = ("glue", "qqp")
    hf_cols = ("question1", "question2")
    tsv_cols = ("question1", "question2", "is_duplicate")
    id_col = "id"


class STSB(_Glue):
    name = "stsb"
    head = "reg"
    label_names: list[str] = []
    metrics = ("pearson", "spearman")
    hf_dataset = ("glue", "stsb")
    tsv_cols = ("sentence1", "sentence2", "score")


class MNLI(_Glue):
    name = "mnli"
    label_names = ["entailment", "neutral", "contradiction"]
    hf_dataset = ("glue", "mnli")
    hf_cols = ("premise", "hypothesis")
    tsv_cols = ("sentence1", "sentence2", "gold_label")
    splits = {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv",
              "test": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}
    hf_splits = {"train": "train", "dev": "validation_matched", "dev_mismatched": "validation_mismatched",
                 "test": "test_matched", "test_mismatched": "test_mismatched"}


class QNLI(_Glue):
    name = "qnli"
    label_names = ["entailment", "not_entailment"]
    hf_dataset = ("glue", "qnli")
    hf_cols = ("question", "sentence")
    tsv_cols = ("question", "sentence", "label")


class GlueRTE(_Glue):
    name = "glue_rte"
    label_names = ["entailment", "not_entailment"]
    hf_dataset = ("glue", "rte")


class WNLI(_Glue):
    name = "wnli"
    label_names = ["0", "1"]
    hf_dataset = ("glue", "wnli")
