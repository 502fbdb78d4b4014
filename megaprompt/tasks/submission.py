"""Submission / prediction file writers in the benchmarks' formats.

- SuperGLUE (super.gluebenchmark.com): one ``<Task>.jsonl`` per task, lines ``{"idx": ..., "label": ...}``;
  BoolQ / WiC / WSC labels "true"/"false", COPA 0/1, ReCoRD the entity string, MultiRC nested
  ``{"idx": p, "passage": {"questions": [{"idx": q, "answers": [{"idx": a, "label": 0|1}]}]}}``.
- GLUE (gluebenchmark.com): ``<Task>.tsv`` with header ``index<TAB>prediction`` (MNLI: ``MNLI-m.tsv`` /
  ``MNLI-mm.tsv``); label names, STS-B scores with 3 decimals.
- SQuAD: the official evaluation's predictions JSON ``{question id: answer text}`` ("" = no answer in v2.0).
- Tagging: CoNLL-style ``word<TAB>predicted tag`` lines, blank line between sentences.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from megaprompt.tasks.base import EncodedSplit

SUPERGLUE_FILES = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC", "record": "ReCoRD",
                   "rte": "RTE", "wic": "WiC", "wsc": "WSC"}
GLUE_FILES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI-m",
              "qnli": "QNLI", "glue_rte": "RTE", "wnli": "WNLI"}
BOOL_TASKS = ("boolq", "wic", "wsc")


def _superglue_label(task: str, pred: Any) -> Any:
    if task in BOOL_TASKS:
        return "true" if str(pred).lower() in ("true", "1") else "false"
    if task == "copa":
        return int(pred)
    return pred


def write_superglue(path: str | Path, task: str, examples: Sequence[dict[str, Any]],
                    predictions: Sequence[Any]) -> Path:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[dict[str, Any]] = []
    if task == "multirc":
        passages: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
        for e, p in zip(examples, predictions):
            idx = e["idx"]
            passages.setdefault(idx["paragraph"], {}).setdefault(idx["question"], []).append(
                {"idx": idx["answer"], "label": int(p)})
        for pid, questions in passages.items():
            qs = [{"idx": q, "answers": a} for q, a in questions.items()]
            lines.append({"idx": pid, "passage": {"questions": qs}})
    else:
        lines = [{"idx": e["idx"], "label": _superglue_label(task, p)} for e, p in zip(examples, predictions)]
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return path


def write_glue(path: str | Path, task: str, examples: Sequence[dict[str, Any]], predictions: Sequence[Any]) -> Path:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for e, p in zip(examples, predictions):
            value = f"{float(p):.3f}" if task == "stsb" else str(p)
            f.write(f"{e['idx']}\t{value}\n")
    return path


def write_squad(path: str | Path, examples: Sequence[dict[str, Any]], predictions: Sequence[str]) -> Path:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({e["id"]: p for e, p in zip(examples, predictions)}, ensure_ascii=False, indent=1),
                    encoding="utf-8")
    return path


def write_tags(path: str | Path, examples: Sequence[dict[str, Any]], predictions: Sequence[Sequence[str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e, tags in zip(examples, predictions):
            for w, t in zip(e["tokens"], tags):
                f.write(f"{w}\t{t}\n")
            f.write("\n")
    return path


def write_predictions(task: Any, split_name: str, split: EncodedSplit, predictions: Sequence[Any],
                      out_dir: str | Path) -> Path:
    """Write ``predictions`` (from ``task.predict``) in the right benchmark format; returns the file."""
    out = Path(out_dir)
    name = task.name
    if name in SUPERGLUE_FILES:
        return write_superglue(out / f"{SUPERGLUE_FILES[name]}.jsonl", name, split.examples, predictions)
    if name in GLUE_FILES:
        fname = GLUE_FILES[name]
        if name == "mnli" and "mismatched" in split_name:
            fname = "MNLI-mm"
        return write_glue(out / f"{fname}.tsv", name, split.examples, predictions)
    if task.head == "span":
        return write_squad(out / f"{name}_{split_name}_predictions.json", split.examples, predictions)
    if task.head == "tag":
        return write_tags(out / f"{name}_{split_name}_predictions.txt", split.examples, predictions)
    return write_glue(out / f"{name}_{split_name}_predictions.tsv", name, split.examples, predictions)


def write_submission(task: Any, predictions: Sequence[Any], split: EncodedSplit, out_dir: str | Path,
                     split_name: str) -> list[Path]:
    """``megaprompt.predict``'s entry point: the files written for one split."""
    return [write_predictions(task, split_name, split, predictions, out_dir)]
