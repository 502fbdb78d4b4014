"""Every registered task trains end to end in-process through ``megaprompt.train.main`` (tiny-bert, ZeRO-3 on
CPU, 2 steps) on a tiny fixture in its official file format, reports its primary metric and exports the prompt.

This covers every head kind (cls, reg, mc, tag, span) with the metric keys each kind reports.
"""
from __future__ import annotations

import json
import math

import pytest

from megaprompt.tasks import TASKS, get_task

from .fixtures import WRITERS, train_env, train_tiny  # noqa: F401  (train_env is a fixture)

SIGNED = {"mcc", "pearson", "spearman"}        # correlations may be negative
HEAD_KEYS = {"tag": {"f1", "precision", "recall"}, "span": {"em", "f1"}}


def test_every_task_has_a_fixture():
    assert set(WRITERS) == set(TASKS), "add a fixture writer to tests/tasks/fixtures.py for each new task"


@pytest.mark.parametrize("name", TASKS)
def test_task_trains(name, tmp_path, train_env):  # noqa: F811
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
    assert (out / "export" / "prompt.safetensors").is_file()
