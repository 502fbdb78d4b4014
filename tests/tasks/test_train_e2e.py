"""Every head kind trains end to end through ``megaprompt/train.py`` (single process, tiny-bert) on tiny
fixtures: cls (RTE), reg (STS-B), mc (COPA), tag (CoNLL-2003), span (SQuAD)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_ner import CONLL03
from .test_qa import QS, squad_json

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "megaprompt" / "train.py"


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_rte(d: Path) -> None:
    rows = [{"premise": f"A dog number {i} runs.", "hypothesis": "An animal moves." if i % 2 else "A cat sleeps.",
             "idx": i, "label": "entailment" if i % 2 else "not_entailment"} for i in range(16)]
    _jsonl(d / "train.jsonl", rows)
    _jsonl(d / "val.jsonl", rows[:8])


def make_stsb(d: Path) -> None:
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [head] + [f"{i}\tg\tf\ty\to\ts\ts\tA man plays {i}.\tA man plays.\t{i % 5}.0" for i in range(16)]
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")


def make_copa(d: Path) -> None:
    rows = [{"premise": f"The man fell {i}.", "choice1": "He slipped.", "choice2": "He sang.",
             "question": "cause" if i % 2 else "effect", "idx": i, "label": i % 2} for i in range(16)]
    _jsonl(d / "train.jsonl", rows)
    _jsonl(d / "val.jsonl", rows[:8])


def make_conll03(d: Path) -> None:
    (d / "eng.train").write_text(CONLL03 * 8)
    (d / "eng.testa").write_text(CONLL03 * 2)


def make_squad(d: Path) -> None:
    (d / "train-v1.1.json").write_text(json.dumps(squad_json(QS * 3)))
    (d / "dev-v1.1.json").write_text(json.dumps(squad_json(QS)))


CASES = {  # head kind: (task, fixture writer, metric keys)
    "cls": ("rte", make_rte, {"accuracy"}),
    "reg": ("stsb", make_stsb, {"pearson", "spearman"}),
    "mc": ("copa", make_copa, {"accuracy"}),
    "tag": ("conll03", make_conll03, {"f1", "precision", "recall"}),
    "span": ("squad", make_squad, {"em", "f1"}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_head_kind_trains_end_to_end(kind, tmp_path):
    if not TRAIN.is_file():
        pytest.skip(f"{TRAIN} not present")
    pytest.importorskip("deepspeed")
    task, make, keys = CASES[kind]
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    out = tmp_path / "run"
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MEGAPROMPT_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, str(TRAIN), "--backbone", "tiny-bert", "--task", task, "--data_dir", str(data),
           "--max_steps", "4", "--batch_size", "4", "--max_seq_len", "64", "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["steps"] == 4
    assert keys <= set(metrics["final"])
    assert all(math.isfinite(metrics["final"][k]) for k in keys)
