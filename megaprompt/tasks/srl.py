"""Semantic role labelling as BIO tagging, one example per predicate: CoNLL-2005 (Carreras & Marquez 2005;
WSJ dev/test and the out-of-domain Brown test) and CoNLL-2012 (Pradhan et al. 2013).

The predicate is marked as in the P-Tuning v2 code (tasks/srl/dataset.py): the predicate word is appended
after [SEP] as an unlabelled second segment. Scored by exact-span micro F1 over argument spans, leaving the
predicate span (V) out as the official ``srl-eval.pl`` does.

Accepted files (per split):
- the one-sentence-per-line format of He et al. (2017, github.com/luheng/deep_srl) used by most BERT SRL
  code: ``<predicate index> w1 w2 ... ||| t1 t2 ...`` (``conll05.train.txt``, ``conll05.devel.txt``,
  ``conll05.test.wsj.txt``, ``conll05.test.brown.txt``; ``conll2012.{train,devel,test}.txt``);
- jsonl lines ``{"tokens": [...], "predicate_index": int, "tags": [...]}``;
- column files with bracketed argument columns: CoNLL-2005 ``word lemma-or-"-" args...`` (words and props
  pasted together), CoNLL-2012 ``*_gold_conll`` (word col 4, lemma col 7, args cols 12..N-1).
The label set is read from the training file (or ``labels.txt`` in the data folder); tags seen only in
dev/test are ignored in the loss but still scored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from megaprompt.files import read_text
from megaprompt.tasks.base import at
from megaprompt.tasks.cache import memo_json
from megaprompt.tasks.io import DataError, read_columns, read_jsonl, text_lines
from megaprompt.tasks.ner import brackets_to_bio
from megaprompt.tasks.tagging import TaggingTask, check_tags, labels_from_tags

logger = logging.getLogger(__name__)


def read_deep_srl(path: Path) -> list[dict[str, Any]]:
    """``<pred index> tokens ||| tags`` lines."""
    out = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        w = f"{path}:{lineno}"
        if "|||" not in line:
            raise DataError(f"{w}: expected '<predicate index> tokens ||| tags'")
        left, right = line.split("|||", 1)
        parts, tags = left.split(), right.split()
        if not parts or not parts[0].isascii() or not parts[0].lstrip("-").isdigit():
            raise DataError(f"{w}: line must start with the predicate's word index")
        out.append(_example(parts[1:], tags, int(parts[0]), w))
    if not out:
        raise DataError(f"{path}: file is empty")
    return out


def _example(tokens: list[str], tags: list[str] | None, pred: Any, w: str) -> dict[str, Any]:
    check_tags(tokens, tags, w)
    if not isinstance(pred, int) or isinstance(pred, bool):
        raise DataError(f"{w}: predicate index {pred!r} is not an integer")
    if not 0 <= pred < len(tokens):
        raise DataError(f"{w}: predicate index {pred} outside the sentence's {len(tokens)} words")
    return {"tokens": tokens, "tags": tags, "predicate_index": pred, "_where": w}


def _tags(e: dict[str, Any]) -> list[str]:
    if e["tags"] is None:
        raise DataError(f"{e['_where']}: a training example needs 'tags'")
    return e["tags"]


def read_srl_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for r in read_jsonl(path):
        w = f"{path}:{r['_line']}"
        pred = r.get("predicate_index", r.get("index"))
        if "tokens" not in r or pred is None:
            raise DataError(f"{w}: missing field(s): need 'tokens', 'predicate_index' (and 'tags')")
        with at(w):
            pred = int(pred) if isinstance(pred, str) else pred
            out.append(_example(r["tokens"], r.get("tags"), pred, w))
    return out


def read_srl_columns(path: Path) -> list[dict[str, Any]]:
    """Bracketed argument columns, one example per predicate column."""
    out = []
    for line, rows in read_columns(path, min_cols=2, comment_prefixes=("#begin", "#end"), same_width="sentence"):
        w = f"{path}:{line}"
        if len(rows[0]) >= 12:      # CoNLL-2012 *_conll: word 3, lemma 6, args 11..-2, coreference -1
            word_col, args = 3, list(range(11, len(rows[0]) - 1))
        else:                       # CoNLL-2005 pasted: word, predicate lemma ("-" if none), args...
            word_col, args = 0, list(range(2, len(rows[0])))
        tokens = [r[word_col] for r in rows]
        for c in args:
            tags = brackets_to_bio([r[c] for r in rows], f"{w} column {c + 1}")
            verbs = [i for i, t in enumerate(tags) if t == "B-V"]
            if len(verbs) != 1:
                raise DataError(f"{w} column {c + 1}: expected exactly one (V*) predicate span, found {len(verbs)}")
            out.append(_example(tokens, tags, verbs[0], w))
    return out


class _SRL(TaggingTask):
    ignore_types = ("V",)
    strict_labels = False
    needs_data_dir = True

    def __init__(self, data_dir: str | None = None, label_names: list[str] | None = None) -> None:
        self.label_names = list(label_names) if label_names else []
        if not self.label_names and data_dir is not None:
            self.label_names = self.read_labels(data_dir)

    def read_labels(self, data_dir: str) -> list[str]:
        lf = Path(data_dir) / "labels.txt"
        if lf.is_file():
            try:
                return [x.strip() for x in read_text(lf).splitlines() if x.strip()]
            except ValueError as err:
                raise DataError(str(err)) from None
        try:
            self.split_path(data_dir, "train")
        except DataError as e:   # e.g. a test-only folder: labels must then come from label_names / labels.txt
            logger.warning("%s: no label set yet (%s)", self.name, e)
            return []
        path = self.split_path(data_dir, "train")
        return memo_json(f"{self.name}-labels", [path], lambda: labels_from_tags(
            [t for e in self.load(data_dir, "train") for t in _tags(e)]))

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        name = path.name
        if name.endswith(".jsonl") or name.endswith(".json"):
            out = read_srl_jsonl(path)
        elif "_conll" in name or name.endswith(".props") or name.endswith(".conll"):
            out = read_srl_columns(path)
        else:
            out = read_deep_srl(path)
        for i, e in enumerate(out):
            e["idx"] = i
        return out

    def segments(self, examples: list[dict[str, Any]]) -> list[list[str]]:
        return [[e["tokens"][e["predicate_index"]]] for e in examples]

    def encode(self, examples, tokenizer, max_seq_len):  # type: ignore[no-untyped-def]
        if not self.label_names:
            raise ValueError(f"{self.name}: no label set; construct with get_task(name, data_dir=...) "
                             f"or label_names=[...]")
        return super().encode(examples, tokenizer, max_seq_len)


class CoNLL05(_SRL):
    name = "conll05"
    splits = {"train": "conll05.train.txt|train.txt|train.jsonl|train.props",
              "dev": "conll05.devel.txt|conll05.dev.txt|devel.txt|dev.txt|dev.jsonl|dev.props",
              "test": "conll05.test.wsj.txt|test.wsj.txt|test_wsj.txt|test_wsj.jsonl|test.wsj.props",
              "test_brown": "conll05.test.brown.txt|test.brown.txt|test_brown.txt|test_brown.jsonl|test.brown.props"}
    source = "CoNLL-2005 SRL (Carreras & Marquez 2005); line format of He et al. 2017"
    file_format = "deep_srl lines '<pred idx> tokens ||| tags', jsonl, or bracketed props columns"


class CoNLL12(_SRL):
    name = "conll12"
    splits = {"train": "conll2012.train.txt|conll12.train.txt|train.txt|train.jsonl|train*_conll",
              "dev": "conll2012.devel.txt|conll12.devel.txt|conll2012.dev.txt|dev.txt|dev.jsonl|dev*_conll",
              "test": "conll2012.test.txt|conll12.test.txt|test.txt|test.jsonl|test*_conll"}
    source = "CoNLL-2012 SRL (Pradhan et al. 2013)"
    file_format = "deep_srl lines, jsonl, or CoNLL-2012 *_gold_conll files"

