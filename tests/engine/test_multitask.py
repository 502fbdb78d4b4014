"""Multi-task P-Tuning v2 under ZeRO-3 on 2 CPU ranks (tiny-bert; RTE, CB and COPA fixture files: two
classification heads of 2 and 3 labels and a multiple-choice head behind one shared prompt):

* per-task dev metrics (``task/metric`` + ``mean``) in metrics.json and TensorBoard, an export with one head
  per task, and ``megaprompt.predict --task`` reproducing a task's best dev metric from it;
* stop at step 3 + resume = uninterrupted (loss per step, exported tensors);
* ZeRO-2 gives the ZeRO-3 loss curve (idle tasks get exact-zero gradients in both);
* multi-task -> single-task continuation with ``--init_from``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaprompt.export import flat_tensors, read_export
from megaprompt.tasks import get_task
from tests.engine.conftest import ROOT, env, metrics, run_ok, scalars
from tests.tasks.fixtures import CB_LABELS, write_jsonl

TASKS = ("rte", "cb", "copa")
ROWS = {
    "rte": lambda i: {"premise": f"A dog number {i} runs.", "hypothesis": "An animal moves." if i % 2 else
                      "A cat sleeps.", "idx": i, "label": "entailment" if i % 2 else "not_entailment"},
    "cb": lambda i: {"premise": f"The dog {i} runs in the park.", "hypothesis": "An animal moves.", "idx": i,
                     "label": CB_LABELS[i % 3]},
    "copa": lambda i: {"premise": f"The man fell {i}.", "choice1": "He slipped.", "choice2": "He sang.",
                       "question": "cause" if i % 2 else "effect", "idx": i, "label": i % 2},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mt")
    out = {}
    for name, row in ROWS.items():
        d = root / name
        d.mkdir()
        write_jsonl(d / "train.jsonl", [row(i) for i in range(24 + 8 * len(out))])   # 24 / 32 / 40 examples
        write_jsonl(d / "val.jsonl", [row(100 + i) for i in range(10)])
        out[name] = d
    return out


def args(out: Path, data: dict[str, Path], *extra: str, ds: str = "zero3") -> list[str]:
    return ["--ds_config", str(ROOT / "ds_configs" / f"{ds}.json"), "--backbone", "tiny-bert",
            "--task", ",".join(TASKS), "--data_dir", ",".join(f"{t}={data[t]}" for t in TASKS),
            "--output_dir", str(out), "--max_steps", "8", "--batch_size", "4", "--grad_accum", "2", "--lr", "5e-2",
            "--eval_every", "4", "--log_every", "1", "--prompt_len", "4", "--seed", "3", "--precision", "fp32",
            "--mixing", "temperature", "--save_every", "4", "--max_seq_len", "32", *extra]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("mt-run") / "run"
    run_ok(args(out, data))
    return out


def test_per_task_metrics_tensorboard_and_export(baseline, data, tmp_path):
    m = metrics(baseline)
    assert m["tasks"] == list(TASKS) and m["primary_metric"] == "mean"
    keys = set(m["final"])
    assert {"rte/accuracy", "cb/accuracy", "cb/macro_f1", "copa/accuracy", "mean"} <= keys
    prim = {t: get_task(t).metric for t in TASKS}
    for res in (m["final"], m["best"]):
        assert res["mean"] == pytest.approx(np.mean([res[f"{t}/{prim[t]}"] for t in TASKS]), abs=1e-9)
    assert [s for s, _ in scalars(baseline / "tb", "eval/cb/accuracy")] == [4, 8]
    assert len(scalars(baseline / "tb", "eval/mean")) == 2

    data_e = read_export(baseline / "export")
    assert data_e.tasks == list(TASKS) and data_e.meta["step"] == m["best"]["step"]
    assert {t: h["route"] for t, (h, _) in data_e.heads.items()} == {t: ["shared"] for t in TASKS}
    assert {t: h["kind"] for t, (h, _) in data_e.heads.items()} == {"rte": "cls", "cb": "cls", "copa": "mc"}
    assert set(flat_tensors(data_e)) == {"prompts.shared.table", *(f"heads.{t}.out.{w}" for t in TASKS
                                                                     for w in ("weight", "bias"))}

    # predict picks a task of a multi-task export: --task is required, and reproduces that task's best metric
    base = [sys.executable, "-m", "megaprompt.predict", "--export", str(baseline / "export"), "--split", "dev"]
    proc = subprocess.run(base, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "holds tasks rte, cb, copa: pass --task" in proc.stderr
    for t in ("cb", "copa"):
        proc = subprocess.run([*base, "--task", t, "--data_dir", str(data[t]), "--output_dir", str(tmp_path / t)],
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads((tmp_path / t / f"{t}_dev_metrics.json").read_text())["metrics"]
        assert got["accuracy"] == pytest.approx(m["best"][f"{t}/accuracy"], abs=1e-9)


def test_stop_and_resume_equals_uninterrupted(baseline, data, tmp_path):
    out = tmp_path / "resumed"
    run_ok(args(out, data, "--stop_at_step", "3"))
    assert (out / "checkpoints" / "step_3" / "COMPLETE").is_file() and not (out / "metrics.json").exists()
    run_ok(args(out, data, "--resume", "auto"))
    a, b = scalars(baseline / "tb", "train/loss"), scalars(out / "tb", "train/loss")
    assert [s for s, _ in b] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=0, atol=1e-6)
    ta, tb = flat_tensors(read_export(baseline / "export")), flat_tensors(read_export(out / "export"))
    for k in ta:
        np.testing.assert_allclose(ta[k].numpy(), tb[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    assert metrics(out)["best"] == pytest.approx(metrics(baseline)["best"])


def test_zero2_gives_the_zero3_loss_curve(baseline, data, tmp_path):
    out = tmp_path / "z2"
    run_ok(args(out, data, ds="zero2"))
    a, b = scalars(baseline / "tb", "train/loss"), scalars(out / "tb", "train/loss")
    assert len(a) == len(b) == 8
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=0, atol=1e-5)
    # non-vacuous: the loss moves between steps (different tasks, learning)
    assert np.ptp([v for _, v in a]) > 1e-3


def test_single_task_continuation_starts_from_the_multi_task_prompt_and_head(baseline, data, tmp_path):
    out = tmp_path / "cont"
    # a vanishing learning rate: after one step the prompt and head are still the multi-task export's
    run_ok(["--ds_config", str(ROOT / "ds_configs" / "zero3.json"), "--backbone", "tiny-bert", "--task", "cb",
            "--data_dir", str(data["cb"]), "--output_dir", str(out), "--max_steps", "1", "--batch_size", "4",
            "--lr", "1e-12", "--prompt_len", "4", "--seed", "9", "--precision", "fp32", "--max_seq_len", "32",
            "--init_from", str(baseline / "export")])
    src, got = flat_tensors(read_export(baseline / "export")), flat_tensors(read_export(out / "export"))
    assert set(got) == {"prompts.shared.table", "heads.cb.out.weight", "heads.cb.out.bias"}
    for k in got:
        np.testing.assert_allclose(got[k].numpy(), src[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    assert "initialised from" in (out / "train.log").read_text()
