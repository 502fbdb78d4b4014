"""Train in-process on tiny fixtures, then ``megaprompt.predict``: leaderboard submission files in each
benchmark's format (SuperGLUE jsonl, GLUE TSV, SQuAD predictions JSON), and ``--split dev`` reproducing the
training run's dev metrics exactly (same export, same dev file)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from megaprompt.tasks import get_task

from .fixtures import train_env, train_tiny  # noqa: F401  (train_env is a fixture)

# task: (split to submit, submission file name)
CASES = {
    "cb": ("test", "CB.jsonl"),
    "boolq": ("test", "BoolQ.jsonl"),
    "sst2": ("test", "SST-2.tsv"),
    "stsb": ("test", "STS-B.tsv"),
    "squad": ("dev", "squad_dev_predictions.json"),        # SQuAD's test set is hidden: submit on dev
    "squad_v2": ("dev", "squad_v2_dev_predictions.json"),
}
EVAL_BATCH = "4"   # train.py evaluates with 2 * batch_size: the same batches give bit-identical logits


def predict(export: Path, task: str, data_dir: Path, split: str, out: Path) -> dict:
    from megaprompt.predict import main
    rc = main(["--export", str(export), "--task", task, "--data_dir", str(data_dir), "--split", split,
               "--output_dir", str(out), "--batch_size", EVAL_BATCH])
    assert rc == 0
    return json.loads((out / f"{task}_{split}_metrics.json").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _tsv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def check_superglue(name: str, sub: Path, data_dir: Path) -> None:
    test = _jsonl(data_dir / "test.jsonl")
    lines = _jsonl(sub)
    assert [x["idx"] for x in lines] == [r["idx"] for r in test]
    assert all(set(x) == {"idx", "label"} for x in lines)
    allowed = {"true", "false"} if name == "boolq" else set(get_task(name).label_names)
    assert {x["label"] for x in lines} <= allowed


def check_glue(name: str, sub: Path, data_dir: Path) -> None:
    test = _tsv(data_dir / "test.tsv")
    rows = _tsv(sub)
    assert rows[0] == ["index", "prediction"]
    assert [r[0] for r in rows[1:]] == [r[0] for r in test[1:]]          # one row per test example, in order
    assert all(len(r) == 2 for r in rows)
    if name == "stsb":
        assert all(len(r[1].split(".")[1]) == 3 and float(r[1]) == float(r[1]) for r in rows[1:])
    else:
        assert {r[1] for r in rows[1:]} <= set(get_task(name).label_names)


def check_squad(name: str, sub: Path, data_dir: Path) -> None:
    gold = json.loads(next(data_dir.glob("dev-v*.json")).read_text())
    ids = [q["id"] for a in gold["data"] for p in a["paragraphs"] for q in p["qas"]]
    preds = json.loads(sub.read_text())
    assert isinstance(preds, dict) and sorted(preds) == sorted(ids)
    contexts = [p["context"] for a in gold["data"] for p in a["paragraphs"]]
    assert all(isinstance(t, str) and (t == "" or any(t in c for c in contexts)) for t in preds.values())
    if name == "squad":
        assert all(preds.values()), "SQuAD v1.1 always answers"


CHECKS = {"cb": check_superglue, "boolq": check_superglue, "sst2": check_glue, "stsb": check_glue,
          "squad": check_squad, "squad_v2": check_squad}


@pytest.mark.parametrize("name", sorted(CASES))
def test_predict_writes_submission_and_reproduces_dev(name, tmp_path, train_env):  # noqa: F811
    rc, run, data_dir = train_tiny(name, tmp_path)
    assert rc == 0
    trained = json.loads((run / "metrics.json").read_text())
    split, fname = CASES[name]
    out = tmp_path / "pred"

    if split == "test":
        result = predict(run / "export", name, data_dir, "test", out / "test")
        assert "metrics" not in result                       # unlabelled test split: no scores
        sub = out / "test" / fname
        assert result["files"] == [str(sub)]
        CHECKS[name](name, sub, data_dir)

    dev = predict(run / "export", name, data_dir, "dev", out / "dev")
    best = {k: v for k, v in trained["best"].items() if k != "step"}
    assert dev["metrics"] == best                            # exact: same export, same dev file, same batches
    assert dev["metrics"][trained["primary_metric"]] == trained["best"][trained["primary_metric"]]
    if split == "dev":
        CHECKS[name](name, out / "dev" / fname, data_dir)
