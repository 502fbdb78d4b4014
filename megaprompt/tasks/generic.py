"""Generic tasks for user data: ``generic_cls`` / ``generic_reg`` over jsonl / csv / tsv files with
``text`` [, ``text_pair``] and ``label`` columns, and ``generic_tag`` over CoNLL-style column files
(first column the word, last column its BIO tag, blank line between sentences).

Files in ``--data_dir``: ``train`` / ``dev`` (or ``validation``/``valid``) / ``test`` with extension .jsonl,
.csv, .tsv (tagging: .txt, .conll, .tsv, .bio). The label set is ``labels.txt`` (one per line) if present,
otherwise every label of the training file (sorted; numerically if all are integers); labels outside it
are an error. ``sentence``/``sentence1``/``question`` and ``sentence2``/``hypothesis`` are accepted as column
aliases.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from megaprompt.tasks.base import at, check_label, finite_number, require
from megaprompt.files import read_text
from megaprompt.tasks.cache import memo_json
from megaprompt.tasks.io import DataError, read_jsonl, read_table
from megaprompt.tasks.ner import read_conll_tagged
from megaprompt.tasks.sentence import SentenceTask
from megaprompt.tasks.tagging import TaggingTask, check_tags, labels_from_tags

logger = logging.getLogger(__name__)

EXTS = ("jsonl", "csv", "tsv")
TEXT_KEYS = ("text", "sentence", "sentence1", "question", "premise")
PAIR_KEYS = ("text_pair", "sentence2", "hypothesis", "passage")


def _pattern(stems: tuple[str, ...], exts: tuple[str, ...]) -> str:
    return "|".join(f"{s}.{e}" for s in stems for e in exts)


def _labels_txt(data_dir: str | None) -> list[str] | None:
    if data_dir is None:
        return None
    p = Path(data_dir) / "labels.txt"
    if not p.is_file():
        return None
    try:
        text = read_text(p)
    except ValueError as err:
        raise DataError(str(err)) from None
    names = [x.strip() for x in text.splitlines() if x.strip()]
    if not names:
        raise DataError(f"{p}: file is empty")
    return names


def read_text_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return read_table(path)


class _GenericText(SentenceTask):
    needs_data_dir = True
    splits = {"train": _pattern(("train",), EXTS), "dev": _pattern(("dev", "validation", "valid", "val"), EXTS),
              "test": _pattern(("test",), EXTS)}
    source = "user data"
    file_format = "train/dev/test .jsonl|.csv|.tsv with text [, text_pair], label"

    def __init__(self, data_dir: str | None = None, label_names: list[str] | None = None) -> None:
        self.label_names = list(label_names) if label_names else []
        if self.head == "cls" and not self.label_names:
            self.label_names = _labels_txt(data_dir) or (self._labels_from_train(data_dir) if data_dir else [])

    def _labels_from_train(self, data_dir: str) -> list[str]:
        path = self.split_path(data_dir, "train")
        return memo_json("generic-labels", [path], lambda: self._read_labels(path))

    @staticmethod
    def _read_labels(path: Path) -> list[str]:
        rows = read_text_rows(path)
        values = set()
        for r in rows:
            if "label" not in r:
                raise DataError(f"{path}:{r.get('_line')}: missing column 'label'")
            raw = r["label"]
            if raw is None or (isinstance(raw, float) and not math.isfinite(raw)) or not str(raw).strip():
                raise DataError(f"{path}:{r.get('_line')}: label {raw!r} is empty, null or NaN")
            values.add(str(raw).strip())
        if all(v.lstrip("-").isascii() and v.lstrip("-").isdigit() for v in values):
            return sorted(values, key=int)
        return sorted(values)

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        return self.parse_rows(read_text_rows(path), str(path), split)

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(rows):
            w = f"{where}:{r.get('_line', i + 1)}"
            with at(w):
                tk = next((k for k in TEXT_KEYS if k in r), None)
                if tk is None:
                    raise DataError(f"{w}: missing column 'text' (have {sorted(k for k in r if k != '_line')})")
                pk = next((k for k in PAIR_KEYS if k in r), None)
                raw = r.get("label")
                if raw is None or raw == "":
                    if split != "test":
                        raise DataError(f"{w}: missing column 'label' in a {split} example")
                    label = None
                elif self.head == "reg":
                    label = finite_number(raw, w)
                else:
                    label = check_label(raw, self.label_names, w)
                require(r, [tk], w)
                out.append({"idx": r.get("idx", r.get("id", i)), "text": str(r[tk]),
                            "text_pair": str(r[pk]) if pk and r[pk] is not None else None, "label": label})
        return out


class GenericClassification(_GenericText):
    name = "generic_cls"
    metrics = ("accuracy", "macro_f1")


class GenericRegression(_GenericText):
    name = "generic_reg"
    head = "reg"
    metrics = ("pearson", "spearman")


class GenericTagging(TaggingTask):
    name = "generic_tag"
    needs_data_dir = True
    splits = {"train": _pattern(("train",), ("txt", "conll", "tsv", "bio")),
              "dev": _pattern(("dev", "validation", "valid", "val"), ("txt", "conll", "tsv", "bio")),
              "test": _pattern(("test",), ("txt", "conll", "tsv", "bio"))}
    source = "user data"
    file_format = "CoNLL-style columns: word ... tag (BIO/IOB1/BILOU), blank line between sentences"

    def __init__(self, data_dir: str | None = None, label_names: list[str] | None = None) -> None:
        self.label_names = list(label_names) if label_names else (_labels_txt(data_dir) or [])
        if not self.label_names and data_dir is not None:
            path = self.split_path(data_dir, "train")
            self.label_names = memo_json("generic_tag-labels", [path], lambda: labels_from_tags(
                [t for e in self.read(path, "train", check=False) for t in e["tags"]]))

    def read(self, path: Path, split: str, check: bool = True) -> list[dict[str, Any]]:
        out = read_conll_tagged(path, tag_col=-1)
        known = set(self.label_names)
        for e in out:
            w = f"{path}:{e['_line']}"
            check_tags(e["tokens"], e["tags"], w)
            if check:
                bad = [t for t in e["tags"] if t not in known]
                if bad:
                    raise DataError(f"{w}: tag {bad[0]!r} is not in the task's label set {self.label_names}")
        return out
