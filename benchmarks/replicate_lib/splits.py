"""Derived data folders for the replication table, written from the official files, never committed.

For every task two folders are written under ``<results>/data/<task>/`` (gitignored):

- ``select/``: the training data of every cell. Its *train* file is a subsample of the official training
  split and its *dev* file is a **selection dev split carved from the official training split**: the
  official training units are shuffled with ``random.Random(SPLIT_SEED)`` and the first ``sel_n`` become
  the selection dev, the next ``train_n`` (0 = all the rest) the training set. The two are disjoint and the
  split is a pure function of the official file and the spec. Hyperparameters are chosen on this dev only.
- ``official/``: the split every reported number comes from: the official dev file, unchanged. The official
  dev split is never used for training or selection.

SQuAD v1.1 has no training file here, so its official dev articles are split in two disjoint halves by
article (articles in file order: the first half is the training pool, the second half is the evaluation
set); the selection dev is carved from the training pool by whole articles (the last ``SQUAD_SEL_ARTICLES``
of the first half), so no paragraph is shared between training, selection and evaluation.

Units: a JSON line / TSV row for SuperGLUE and SST-2, a sentence for CoNLL, a question for SQuAD.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from megaprompt.files import atomic_write_text

SPLIT_SEED = 0
SQUAD_SEL_ARTICLES = 2


def _shuffle_carve(units: list[Any], sel_n: int, train_n: int) -> tuple[list[Any], list[Any]]:
    """(train, sel): disjoint, deterministic; ``sel`` first ``sel_n`` of the seeded shuffle."""
    order = list(range(len(units)))
    random.Random(SPLIT_SEED).shuffle(order)
    if sel_n >= len(units):
        raise ValueError(f"cannot carve {sel_n} selection units from {len(units)}")
    sel = [units[i] for i in order[:sel_n]]
    rest = order[sel_n:]
    train = [units[i] for i in (rest[:train_n] if train_n else rest)]
    return train, sel


def _jsonl(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def _conll_sentences(path: Path) -> list[str]:
    """Sentence blocks of a CoNLL column file, ``-DOCSTART-`` blocks dropped."""
    blocks = [b.strip("\n") for b in path.read_text().split("\n\n")]
    return [b for b in blocks if b.strip() and not b.startswith("-DOCSTART-")]


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(folder / name, text)


def derive(fmt: str, src: Path, out: Path, sel_n: int, train_n: int, eval_n: int = 0) -> dict[str, Any]:
    """Write ``out/select`` (+ ``out/official`` for SQuAD) and return the split sizes (stated in the report).

    ``fmt``: superglue | sst2 | conll03 | conll04 | squad. Idempotent: rewrites identical bytes."""
    if fmt == "superglue":
        train, sel = _shuffle_carve(_jsonl(src / "train.jsonl"), sel_n, train_n)
        _write(out / "select", {"train.jsonl": "\n".join(train) + "\n", "val.jsonl": "\n".join(sel) + "\n"})
        official = len(_jsonl(src / "val.jsonl"))
    elif fmt == "sst2":
        header, *rows = [ln for ln in (src / "train.tsv").read_text().splitlines() if ln.strip()]
        train, sel = _shuffle_carve(rows, sel_n, train_n)
        _write(out / "select", {"train.tsv": "\n".join([header, *train]) + "\n",
                                "dev.tsv": "\n".join([header, *sel]) + "\n"})
        official = len((src / "dev.tsv").read_text().splitlines()) - 1
    elif fmt == "conll03":
        train, sel = _shuffle_carve(_conll_sentences(src / "eng.train"), sel_n, train_n)
        _write(out / "select", {"eng.train": "\n\n".join(train) + "\n", "eng.testa": "\n\n".join(sel) + "\n"})
        official = len(_conll_sentences(src / "eng.testa"))
    elif fmt == "conll04":
        train, sel = _shuffle_carve(json.loads((src / "conll04_train.json").read_text()), sel_n, train_n)
        _write(out / "select", {"conll04_train.json": json.dumps(train), "conll04_dev.json": json.dumps(sel)})
        official = len(json.loads((src / "conll04_dev.json").read_text()))
    elif fmt == "squad":
        return _derive_squad(src, out, sel_n, train_n, eval_n)
    else:
        raise ValueError(f"unknown data format {fmt!r}")
    return {"train": len(train), "select_dev": len(sel), "official_dev": official,
            "official_dir": str(src), "select_dir": str(out / "select")}


def _squad_questions(articles: list[dict[str, Any]]) -> int:
    return sum(len(p["qas"]) for a in articles for p in a["paragraphs"])


def _cap_questions(articles: list[dict[str, Any]], cap: int, shuffle: bool) -> list[dict[str, Any]]:
    """At most ``cap`` questions (0 = all), whole paragraphs kept in file order; ``shuffle`` samples the
    paragraphs with the split seed instead of taking the first ones."""
    if not cap:
        return articles
    paras = [(ai, pi) for ai, a in enumerate(articles) for pi in range(len(a["paragraphs"]))]
    if shuffle:
        random.Random(SPLIT_SEED).shuffle(paras)
    keep: set[tuple[int, int]] = set()
    n = 0
    for ai, pi in paras:
        if n >= cap:
            break
        keep.add((ai, pi))
        n += len(articles[ai]["paragraphs"][pi]["qas"])
    out = []
    for ai, a in enumerate(articles):
        ps = [p for pi, p in enumerate(a["paragraphs"]) if (ai, pi) in keep]
        if ps:
            out.append({**a, "paragraphs": ps})
    return out


def _derive_squad(src: Path, out: Path, sel_n: int, train_n: int, eval_n: int) -> dict[str, Any]:
    data = json.loads((src / "dev-v1.1.json").read_text())
    articles = data["data"]
    half = len(articles) // 2
    pool, evaluation = articles[:half], articles[half:]
    train_art, sel_art = pool[:-SQUAD_SEL_ARTICLES], pool[-SQUAD_SEL_ARTICLES:]
    train = _cap_questions(train_art, train_n, shuffle=True)
    sel = _cap_questions(sel_art, sel_n, shuffle=True)
    ev = _cap_questions(evaluation, eval_n, shuffle=True)

    def doc(arts: list[dict[str, Any]]) -> str:
        return json.dumps({"version": data.get("version", "1.1"), "data": arts})
    _write(out / "select", {"train-v1.1.json": doc(train), "dev-v1.1.json": doc(sel)})
    _write(out / "official", {"dev-v1.1.json": doc(ev)})
    return {"train": _squad_questions(train), "select_dev": _squad_questions(sel),
            "official_dev": _squad_questions(ev), "official_dir": str(out / "official"),
            "select_dir": str(out / "select"),
            "note": (f"SQuAD v1.1 has no train set here: dev articles 1-{half} are the training pool "
                     f"(articles {half - SQUAD_SEL_ARTICLES + 1}-{half} carved as the selection dev), articles "
                     f"{half + 1}-{len(articles)} the evaluation half ({_squad_questions(ev)} of its "
                     f"{_squad_questions(evaluation)} questions, whole paragraphs, seeded sample)")}
