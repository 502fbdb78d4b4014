"""Named entity recognition: CoNLL-2003, CoNLL-2004 and OntoNotes 5.0, scored by exact-span micro F1.

- CoNLL-2003 (Tjong Kim Sang & De Meulder 2003): the original 4-column files ``eng.train`` / ``eng.testa``
  (dev) / ``eng.testb`` (test) or ``train.txt`` / ``valid.txt`` / ``test.txt``; ``-DOCSTART-`` lines skipped,
  the IOB1 tags converted to IOB2 (as Hugging Face ``conll2003`` and P-Tuning v2 use them).
- CoNLL-2004 entities (Roth & Yih 2004; SpERT split 922/231/288): JSON lists of ``{tokens, tags}`` with BILOU
  tags over Loc / Peop / Org / Other, converted to BIO.
- OntoNotes 5.0 in the CoNLL-2012 format (Pradhan et al. 2012): ``*_gold_conll`` files (one per split, or
  folders ``train/`` ``development/`` ``test/`` searched recursively), bracketed named-entity column 11
  converted to BIO over the 18 OntoNotes types; or any CoNLL-style file with BIO tags in the last column.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from megaprompt.tasks.base import canonical_split
from megaprompt.tasks.io import DataError, read_columns, read_json
from megaprompt.tasks.metrics import bilou_to_bio, iob1_to_iob2
from megaprompt.tasks.tagging import TaggingTask, check_tags

logger = logging.getLogger(__name__)

CONLL03_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
CONLL04_LABELS = ["O", "B-Loc", "I-Loc", "B-Peop", "I-Peop", "B-Org", "I-Org", "B-Other", "I-Other"]
ONTONOTES_TYPES = ["PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "DATE", "TIME", "PERCENT", "MONEY",
                   "QUANTITY", "ORDINAL", "CARDINAL", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"]
ONTONOTES_LABELS = ["O"] + [f"{p}-{t}" for t in ONTONOTES_TYPES for p in "BI"]


def read_conll_tagged(path: Path, tag_col: int = -1, iob1: bool = False) -> list[dict[str, Any]]:
    """Column file -> [{idx, tokens (col 0), tags (col ``tag_col``), _line}]."""
    out = []
    for line, rows in read_columns(path):
        tags = [r[tag_col] for r in rows]
        out.append({"idx": len(out), "tokens": [r[0] for r in rows], "tags": iob1_to_iob2(tags) if iob1 else tags,
                    "_line": line})
    return out


def brackets_to_bio(column: list[str], where: str) -> list[str]:
    """CoNLL-2005/2012 bracket column ("(ORG*", "*", "*)", "(GPE)", "(V*V)") to BIO tags."""
    tags: list[str] = []
    current: str | None = None
    for x in column:
        if x.startswith("("):
            if current is not None:
                raise DataError(f"{where}: span {x!r} opens inside the unclosed span {current!r}")
            label = x[1:x.index("*")] if "*" in x else x[1:].rstrip(")")
            tags.append(f"B-{label}")
            current = None if x.endswith(")") else label
        elif current is not None:
            tags.append(f"I-{current}")
            if x.endswith(")"):
                current = None
        else:
            if x.endswith(")"):
                raise DataError(f"{where}: span closes with {x!r} but none is open")
            tags.append("O")
    if current is not None:
        raise DataError(f"{where}: span {current!r} is never closed")
    return tags


def conll2012_files(data_dir: str | Path, split: str) -> list[Path]:
    """The ``*_conll`` files of a split: a single file or a folder searched recursively."""
    d = Path(data_dir)
    names = {"train": ("train",), "dev": ("development", "dev", "valid", "validation"), "test": ("test",)}[split]
    for n in names:
        for cand in sorted(d.glob(f"{n}*")):
            if cand.is_dir():
                files = sorted(cand.rglob("*gold_conll")) or sorted(cand.rglob("*_conll"))
                if files:
                    return files
            elif cand.is_file() and (cand.name.endswith("_conll") or cand.suffix in (".txt", ".conll", ".bio")):
                return [cand]
    raise DataError(f"ontonotes: no {split} file (train*/dev*/development*/test*: a *_conll file, a folder of "
                    f"them, or a .txt/.conll BIO column file) in {d}")


def read_conll2012_sentences(path: Path) -> list[tuple[int, list[list[str]]]]:
    return list(read_columns(path, min_cols=2, comment_prefixes=("#begin", "#end"), same_width="sentence"))


class CoNLL03(TaggingTask):
    name = "conll03"
    label_names = CONLL03_LABELS
    splits = {"train": "eng.train|train.txt|train", "dev": "eng.testa|valid.txt|dev.txt|valid",
              "test": "eng.testb|test.txt|test"}
    hf_dataset = ("conll2003", None)
    source = "CoNLL-2003 (Tjong Kim Sang & De Meulder 2003)"
    file_format = "original 4-column files eng.train/eng.testa/eng.testb (or train/valid/test.txt), IOB1 -> IOB2"

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        out = read_conll_tagged(path, tag_col=-1, iob1=True)
        for e in out:
            check_tags(e["tokens"], e["tags"], f"{path}:{e['_line']}")
            for t in e["tags"]:
                if t not in CONLL03_LABELS:
                    raise DataError(f"{path}:{e['_line']}: tag {t!r} is not in the task's label set {CONLL03_LABELS}")
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        return [{"idx": i, "tokens": r["tokens"], "tags": [CONLL03_LABELS[t] for t in r["ner_tags"]]}
                for i, r in enumerate(rows)]


class CoNLL04(TaggingTask):
    name = "conll04"
    label_names = CONLL04_LABELS
    splits = {"train": "conll04_train.json|train.json", "dev": "conll04_dev.json|dev.json",
              "test": "conll04_test.json|test.json"}
    source = "CoNLL-2004 entities (Roth & Yih 2004), SpERT split (Eberts & Ulges 2020)"
    file_format = "JSON list of {tokens, tags} (BILOU -> BIO): conll04_{train,dev,test}.json"

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of sentences")
        out = []
        for i, r in enumerate(data):
            w = f"{path}: sentence {i}"
            if not isinstance(r, dict) or "tokens" not in r or "tags" not in r:
                raise DataError(f"{w}: expected an object with 'tokens' and 'tags'")
            check_tags(r["tokens"], r["tags"], w)
            tags = bilou_to_bio(r["tags"])
            bad = [t for t in tags if t not in CONLL04_LABELS]
            if bad:
                raise DataError(f"{w}: tag {bad[0]!r} is not in the task's label set {CONLL04_LABELS}")
            out.append({"idx": i, "tokens": list(r["tokens"]), "tags": tags})
        return out


class OntoNotes(TaggingTask):
    name = "ontonotes"
    label_names = ONTONOTES_LABELS
    splits = {"train": "train", "dev": "development", "test": "test"}
    hf_dataset = ("ontonotes/conll2012_ontonotesv5", "english_v4")
    source = "OntoNotes 5.0, CoNLL-2012 format (Pradhan et al. 2012)"
    file_format = ("CoNLL-2012 *_gold_conll (file per split or train/ development/ test/ folders); "
                   "or BIO column files train/dev/test.txt")

    def load(self, data_dir: str | None, split: str) -> list[dict[str, Any]]:
        split = canonical_split(split, self.splits, self.name)
        if data_dir is None:
            return self.load_hf(split)
        out: list[dict[str, Any]] = []
        for path in conll2012_files(data_dir, split):
            out.extend(self.read(path, split))
        for i, e in enumerate(out):
            e["idx"] = i
        logger.info("ontonotes/%s: %d sentences", split, len(out))
        return out

    def require_files(self, data_dir: str, split: str) -> None:
        conll2012_files(data_dir, canonical_split(split, self.splits, self.name))

    def source_files(self, data_dir: str | None, split: str) -> list[Path]:
        return [] if data_dir is None else conll2012_files(data_dir, canonical_split(split, self.splits, self.name))

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        out = []
        for line, rows in read_conll2012_sentences(path):
            w = f"{path}:{line}"
            if len(rows[0]) >= 12:     # *_conll: word in column 4, named entities in column 11
                tokens, tags = [r[3] for r in rows], brackets_to_bio([r[10] for r in rows], w)
            else:
                tokens, tags = [r[0] for r in rows], [r[-1] for r in rows]
            check_tags(tokens, tags, w)
            bad = [t for t in tags if t not in ONTONOTES_LABELS]
            if bad:
                raise DataError(f"{w}: tag {bad[0]!r} is not in the task's label set (18 OntoNotes types, BIO)")
            out.append({"idx": len(out), "tokens": tokens, "tags": tags, "_line": line})
        return out

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        out = []
        for doc in rows:
            for s in doc["sentences"]:
                out.append({"idx": len(out), "tokens": s["words"],
                            "tags": [ONTONOTES_LABELS[t] for t in s["named_entities"]]})
        return out

