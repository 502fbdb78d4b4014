"""End to end on a real Slurm with the real trainer (megaprompt/train.py, tiny-bert, built-in demo task,
2 CPU ranks, DeepSpeed ZeRO-3):

* a 2-element job array (seeds 1 and 2): each element's metrics.json, export/ and tensorboard events,
  then tools/sweep_summary.py over the sweep;
* preemption for real: SIGUSR1 to the batch shell mid-training -> checkpoint -> rank 0 requeues -> the
  requeued job resumes (the step counter continues) and ends with the same exported prompt weights as the
  uninterrupted seed-1 element of the sweep.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from megaprompt.export import flat_tensors, read_export

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
STEPS = 60
TRAIN = ["--ds_config", "ds_configs/zero3.json", "--backbone", "tiny-bert", "--task", "demo",
         "--max_steps", str(STEPS), "--eval_every", "1000", "--save_every", "5", "--log_every", "5",
         "--batch_size", "8", "--precision", "fp32"]
# eval_every > max_steps: the only evaluation (hence the export) happens at the last step, so export/
# holds the final prompt weights.


@pytest.fixture(autouse=True, scope="module")
def _need_trainer() -> None:
    if not (ROOT / "megaprompt" / "train.py").is_file():
        pytest.skip("megaprompt/train.py not present yet")


def _events(tb: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb))
    ea.Reload()
    return {tag: [e.step for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def sweep(slurm: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sweep_dir = tmp_path_factory.mktemp("slurm-e2e") / "sweep"
    t0 = time.monotonic()
    job = slurm.launch(["--output_dir", str(sweep_dir), "--sweep", "lr=1e-2", "seed=1,2", "--throttle", "2",
                        "--ntasks_per_node", "2", "--job_name", "mp-e2e", "--", *TRAIN])
    recs = slurm.wait(job, timeout=300, n_elements=2)
    return {"dir": sweep_dir, "job": job, "recs": recs, "wall": time.monotonic() - t0}


def test_array_of_zero3_runs(sweep: dict[str, Any]) -> None:
    d, job = sweep["dir"], sweep["job"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert [e["dir"] for e in manifest["elements"]] == ["lr=1e-2,seed=1", "lr=1e-2,seed=2"]
    for el, rec in zip(manifest["elements"], sorted(sweep["recs"], key=lambda r: int(r["ArrayTaskId"]))):
        log = (d / "logs" / f"{job}_{el['index']}.out").read_text()
        assert rec["JobState"] == "COMPLETED", log[-3000:]
        out = d / el["dir"]
        m = json.loads((out / "metrics.json").read_text())
        assert m["task"] == "demo" and m["steps"] == STEPS and m["world_size"] == 2, m
        assert "accuracy" in m["best"] and 0 <= m["best"]["accuracy"] <= 100
        assert (out / "export" / "export.json").is_file()
        assert flat_tensors(read_export(out / "export"))
        ev = _events(out / "tb")
        assert ev["train/loss"][-1] == STEPS and "eval/accuracy" in ev, ev
        assert "training finished" in log and f"job {job}_{el['index']}" in log
    # two seeds: different runs
    a, b = (flat_tensors(read_export(d / e["dir"] / "export")) for e in manifest["elements"])
    assert any(not torch.equal(a[k], b[k]) for k in a)

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_summary.py"), str(d)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((d / "summary" / "summary.json").read_text())
    assert s["metric"] == "accuracy" and s["best"]["demo"]["n"] == 2 and not s["missing"] and not s["failed"]
    assert (d / "summary" / "metric_vs_hparams.png").is_file()
    assert "| demo | 1e-2 |" in (d / "summary" / "summary.md").read_text()


def test_preempt_requeue_resume_same_weights(slurm: Any, sweep: dict[str, Any], slurm_tmp: Path) -> None:
    out = slurm_tmp / "preempted"
    job = slurm.launch(["--output_dir", str(out), "--ntasks_per_node", "2", "--job_name", "mp-preempt-e2e",
                        "--max_requeues", "2", "--", *TRAIN, "--lr", "1e-2", "--seed", "1"])
    log = out / "logs" / f"{job}.out"
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "step_5" / "COMPLETE").exists():
        assert time.monotonic() < deadline, log.read_text() if log.is_file() else "no log"
        assert not (out / "metrics.json").exists(), "finished before the signal could be sent"
        time.sleep(0.1)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    recs = slurm.wait(job, timeout=300)
    text = log.read_text()
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["Restarts"] == "1", (recs, text[-4000:])
    assert "caught SIGUSR1" in text, text[-4000:]
    stop = re.search(r"preempted at step (\d+): checkpoint saved, job requeued", text)
    assert stop, text[-4000:]
    k = int(stop.group(1))
    assert 5 <= k < STEPS
    assert re.search(rf"resumed from \S+step_{k} at step {k}\b", text), text[-4000:]
    assert f"requeued job {job}" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == STEPS
    steps = _events(out / "tb")["train/loss"]
    assert sorted(set(steps)) == sorted(steps) and steps[-1] == STEPS    # continued, never restarted
    ref = flat_tensors(read_export(sweep["dir"] / "lr=1e-2,seed=1" / "export"))
    got = flat_tensors(read_export(out / "export"))
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.allclose(ref[key], got[key], rtol=1e-5, atol=1e-6), \
            f"{key}: max diff {(ref[key] - got[key]).abs().max().item()}"
