"""Every registered task trains end to end in-process through ``megaprompt.train.main`` (tiny-bert, ZeRO-3 on
CPU, 2 steps) on a tiny fixture in its official file format, exports the prompt, and ``megaprompt.predict``
on that export reproduces the training run's dev metrics exactly (same export, same dev file, same batches).
The predict run computes its metrics from the model's own outputs, so a trainer whose evaluation reported
anything else (constants, another split, stale outputs) fails here.

For six benchmarks the leaderboard files are checked too: SuperGLUE jsonl, GLUE TSV and SQuAD predictions
JSON for the test split (one line per test example, in order, valid labels), and the dev-split file scored
against the fixture's gold answers - with scikit-learn / the official SQuAD normalisation, not the task's
``evaluate`` - gives the metric that predict reported.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from megaprompt.tasks import TASKS, get_task

from .fixtures import WRITERS, train_env, train_tiny  # noqa: F401  (train_env is a fixture)

SIGNED = {"mcc", "pearson", "spearman"}        # correlations may be negative
HEAD_KEYS = {"tag": {"f1", "precision", "recall"}, "span": {"em", "f1"}}
EVAL_BATCH = "4"   # train.py evaluates with 2 * batch_size: the same batches give bit-identical logits
# task: (split to submit, submission file name)
SUBMISSIONS = {
    "cb": ("test", "CB.jsonl"),
    "boolq": ("test", "BoolQ.jsonl"),
    "sst2": ("test", "SST-2.tsv"),
    "stsb": ("test", "STS-B.tsv"),
    "squad": ("dev", "squad_dev_predictions.json"),        # SQuAD's test set is hidden: submit on dev
    "squad_v2": ("dev", "squad_v2_dev_predictions.json"),
}


def test_every_task_has_a_fixture():
    assert set(WRITERS) == set(TASKS), "add a fixture writer to tests/tasks/fixtures.py for each new task"


def predict(export: Path, task: str, data_dir: Path | None, split: str, out: Path) -> dict:
    from megaprompt.predict import main
    argv = ["--export", str(export), "--task", task, "--split", split, "--output_dir", str(out),
            "--batch_size", EVAL_BATCH]
    if data_dir is not None:
        argv += ["--data_dir", str(data_dir)]
    assert main(argv) == 0
    return json.loads((out / f"{task}_{split}_metrics.json").read_text())


@pytest.mark.parametrize("name", TASKS)
def test_task_trains_and_predict_reproduces_its_dev_metrics(name, tmp_path, train_env):  # noqa: F811
    if name not in WRITERS:
        pytest.fail(f"no fixture writer for task {name!r} in tests/tasks/fixtures.py")
    rc, out, data_dir = train_tiny(name, tmp_path)
    assert rc == 0, (out / "train.log").read_text()[-4000:] if (out / "train.log").is_file() else "no train.log"
    metrics = json.loads((out / "metrics.json").read_text())
    task = get_task(name, data_dir=None if data_dir is None else str(data_dir))
    assert metrics["task"] == task.name and metrics["steps"] == 2
    assert metrics["primary_metric"] == task.metric
    final = metrics["final"]
    keys = {task.metric} | set(getattr(task, "metrics", ())) | HEAD_KEYS.get(task.head, set())
    assert keys <= set(final), f"missing metrics {keys - set(final)} in {final}"
    for k in keys:
        lo = -100.0 if k in SIGNED else 0.0
        assert math.isfinite(final[k]) and lo <= final[k] <= 100.0, f"{k}={final[k]}"
    assert metrics["best"]["step"] == 2 and {k: v for k, v in metrics["best"].items() if k != "step"} == final

    dev = predict(out / "export", name, data_dir, "dev", tmp_path / "pred" / "dev")
    assert dev["metrics"] == final                           # exact: same export, same dev file, same batches

    if name in SUBMISSIONS:
        split, fname = SUBMISSIONS[name]
        if split == "test":
            result = predict(out / "export", name, data_dir, "test", tmp_path / "pred" / "test")
            assert "metrics" not in result                   # unlabelled test split: no scores
            sub = tmp_path / "pred" / "test" / fname
            assert result["files"] == [str(sub)]
            CHECK_TEST[name](name, sub, data_dir)
        dev_file = Path(dev["files"][0])
        if split == "dev":
            assert dev_file.name == fname
        SCORE_DEV[name](dev_file, data_dir, dev["metrics"])


# ---- test-split submission files ------------------------------------------------------------------------
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
        assert all(len(r[1].split(".")[1]) == 3 and math.isfinite(float(r[1])) for r in rows[1:])
    else:
        assert {r[1] for r in rows[1:]} <= set(get_task(name).label_names)


CHECK_TEST = {"cb": check_superglue, "boolq": check_superglue, "sst2": check_glue, "stsb": check_glue}


# ---- dev-split files scored against the fixture's gold ---------------------------------------------------
def score_superglue(name: str):
    def score(path: Path, data_dir: Path, reported: dict) -> None:
        from sklearn.metrics import accuracy_score, f1_score
        gold = {r["idx"]: str(r["label"]).lower() for r in _jsonl(data_dir / "val.jsonl")}
        lines = _jsonl(path)
        assert [x["idx"] for x in lines] == list(gold)
        y, p = [gold[x["idx"]] for x in lines], [str(x["label"]).lower() for x in lines]
        assert reported["accuracy"] == pytest.approx(100 * accuracy_score(y, p), abs=1e-9)
        if name == "cb":
            assert reported["macro_f1"] == pytest.approx(100 * f1_score(y, p, average="macro"), abs=1e-9)
    return score


def score_sst2(path: Path, data_dir: Path, reported: dict) -> None:
    gold = [r[1] for r in _tsv(data_dir / "dev.tsv")[1:]]
    pred = [r[1] for r in _tsv(path)[1:]]
    assert len(pred) == len(gold)
    assert reported["accuracy"] == pytest.approx(100 * sum(a == b for a, b in zip(gold, pred)) / len(gold))


def score_stsb(path: Path, data_dir: Path, reported: dict) -> None:
    rows = _tsv(path)[1:]
    assert [r[0] for r in rows] == [r[0] for r in _tsv(data_dir / "dev.tsv")[1:]]
    assert all(math.isfinite(float(r[1])) for r in rows)     # 3-decimal scores: too coarse to re-score exactly


def score_squad(path: Path, data_dir: Path, reported: dict) -> None:
    from megaprompt.tasks.metrics import squad_scores       # the official script's normalisation
    gold_json = json.loads(next(data_dir.glob("dev-v*.json")).read_text())
    gold = {q["id"]: [a["text"] for a in q["answers"]]
            for a in gold_json["data"] for p in a["paragraphs"] for q in p["qas"]}
    preds = json.loads(path.read_text())
    assert sorted(preds) == sorted(gold)
    contexts = [p["context"] for a in gold_json["data"] for p in a["paragraphs"]]
    assert all(isinstance(t, str) and (t == "" or any(t in c for c in contexts)) for t in preds.values())
    scores = squad_scores(preds, gold)
    assert reported["em"] == pytest.approx(100 * scores["em"]) and reported["f1"] == pytest.approx(100 * scores["f1"])


def score_squad_v1(path: Path, data_dir: Path, reported: dict) -> None:
    assert all(json.loads(path.read_text()).values()), "SQuAD v1.1 always answers"
    score_squad(path, data_dir, reported)


SCORE_DEV = {"cb": score_superglue("cb"), "boolq": score_superglue("boolq"), "sst2": score_sst2, "stsb": score_stsb,
             "squad": score_squad_v1, "squad_v2": score_squad}
