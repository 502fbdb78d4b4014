"""Real-Slurm tests of the launcher with a stand-in training script (tests/jobs/stub_train.py).

They need no model: they check what the launcher itself promises on a live cluster: a job array whose
elements each run 2 ranks with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, values that look like
shell code arrive literally (and execute nothing), finished elements are skipped on resubmission, and the
SIGUSR1 -> trap -> srun -> all ranks -> checkpoint -> rank-0 requeue -> resume chain, plus the requeue cap.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slurm
STUB = "tests/jobs/stub_train.py"


def _log_of(sweep: Path, job: str, index: int | None = None) -> str:
    name = f"{job}_{index}.out" if index is not None else f"{job}.out"
    path = sweep / "logs" / name
    return path.read_text() if path.is_file() else f"<no log {path}>"


def test_array_ranks_and_literal_values(slurm: Any, slurm_tmp: Path) -> None:
    pwn = slurm_tmp / "pwned"
    grid = slurm_tmp / "grid.yaml"
    weird = [f"$(touch {pwn}_a)", f"`touch {pwn}_b`"]
    grid.write_text(yaml.safe_dump({"weird": weird}))
    recipe = f"'; touch {pwn}_c; echo \"$(touch {pwn}_d)\" \\"
    sweep = slurm_tmp / "sweep"
    common = ["--output_dir", str(sweep), "--sweep_file", str(grid), "--throttle", "1",
              "--ntasks_per_node", "2", "--entry", STUB, "--job_name", "mp-quote"]
    job = slurm.launch([*common, "--", "--recipe", recipe])
    recs = slurm.wait(job, timeout=180, n_elements=2)
    assert [r["JobState"] for r in recs] == ["COMPLETED", "COMPLETED"], recs

    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [e["params"]["weird"] for e in manifest["elements"]] == weird
    assert manifest["submissions"][-1]["job_id"] == job
    for el in manifest["elements"]:
        out = sweep / el["dir"]
        assert (out / "metrics.json").is_file(), _log_of(sweep, job, el["index"])
        for rank in (0, 1):
            rec = json.loads((out / f"rank{rank}.json").read_text())
            assert rec["argv"] == ["--recipe", recipe, "--weird", el["params"]["weird"],
                                   "--output_dir", str(out), "--resume", "auto", "--max_requeues", "3"]
            env = rec["env"]
            assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
            assert env["MASTER_ADDR"] == recs[0]["NodeList"]
            assert 20000 <= int(env["MASTER_PORT"]) < 40000
            assert env["SLURM_ARRAY_JOB_ID"] == job
            assert env["SLURM_ARRAY_TASK_ID"] == str(el["index"])
        assert "training finished" in _log_of(sweep, job, el["index"])
    assert not list(slurm_tmp.glob("pwned*")), "a quoted value was executed"

    # Resubmission lists only unfinished elements; a finished sweep submits nothing.
    (sweep / manifest["elements"][1]["dir"] / "metrics.json").unlink()
    dry = subprocess.run(["python", "-m", "megaprompt.launch", *common, "--dry-run", "--", "--recipe",
                          recipe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "#SBATCH --array=1%1\n" in dry
    job2 = slurm.launch([*common, "--", "--recipe", recipe])
    recs2 = slurm.wait(job2, timeout=120, n_elements=1)
    assert [r.get("ArrayTaskId") for r in recs2] == ["1"] and recs2[0]["JobState"] == "COMPLETED"
    again = subprocess.run(["python", "-m", "megaprompt.launch", *common, "--", "--recipe", recipe],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    assert "nothing to submit" in again.stderr and again.stdout == ""
    assert not list(slurm_tmp.glob("pwned*"))


def _wait_for_step(path: Path, step: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not reach step {step}: {log.read_text() if log.is_file() else ''}")


def _steps(path: Path) -> list[tuple[int, int]]:
    out = []
    for line in path.read_text().splitlines():
        r, s = (int(tok.split("=")[1]) for tok in line.split())
        out.append((r, s))
    return out


def test_usr1_checkpoint_requeue_resume(slurm: Any, slurm_tmp: Path) -> None:
    """Through a (one-element) job array, so the element is requeued as <array_job>_<index>."""
    sweep = slurm_tmp / "sweep"
    job = slurm.launch(["--output_dir", str(sweep), "--sweep", "seed=7", "--ntasks_per_node", "2",
                        "--entry", STUB, "--job_name", "mp-preempt", "--max_requeues", "2", "--",
                        "--steps", "30", "--step_seconds", "0.25"])
    out = sweep / "seed=7"
    log = sweep / "logs" / f"{job}_0.out"
    _wait_for_step(out / "steps_rank0.log", 5, timeout=90, log=log)
    slurm.run("scancel", "--signal=USR1", "--batch", f"{job}_0")
    recs = slurm.wait(job, timeout=180)
    text = log.read_text()
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["Restarts"] == "1", (recs, text)
    assert "caught SIGUSR1" in text and "forwarding it to the training step" in text, text
    assert f"requeued job {job}_0 (restart 1 of at most 2)" in text, text
    for rank in (0, 1):
        steps = _steps(out / f"steps_rank{rank}.log")
        assert [s for _, s in steps] == list(range(1, 31)), steps   # continues, never restarts
        first = [s for r, s in steps if r == 0]
        second = [s for r, s in steps if r == 1]
        assert first and second and second[0] == first[-1] + 1
        assert json.loads((out / "checkpoints" / f"rank{rank}.json").read_text())["step"] == first[-1]
    assert (_steps(out / "steps_rank0.log") == _steps(out / "steps_rank1.log")), "ranks disagreed"
    assert f"resumed from step {first[-1]}" in text
    assert (out / "metrics.json").is_file()


def test_signal_before_handler_batch_script_requeues(slurm: Any, slurm_tmp: Path) -> None:
    """A signal that kills the ranks before they install the handler (e.g. during model loading): the
    batch script sees the failed step and requeues the job itself."""
    out = slurm_tmp / "early"
    job = slurm.launch(["--output_dir", str(out), "--ntasks_per_node", "2", "--entry", STUB,
                        "--job_name", "mp-early", "--", "--steps", "4", "--step_seconds", "0.1",
                        "--install_after", "30"])
    log = out / "logs" / f"{job}.out"
    deadline = time.monotonic() + 60
    while not ((out / "rank0.json").is_file() and (out / "rank1.json").is_file()):
        assert time.monotonic() < deadline, log.read_text() if log.is_file() else "no log"
        time.sleep(0.2)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    recs = slurm.wait(job, timeout=120)
    text = log.read_text()
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["Restarts"] == "1", (recs, text)
    assert f"requeueing {job} from the batch script" in text, text
    assert (out / "metrics.json").is_file()


def test_requeue_cap(slurm: Any, slurm_tmp: Path) -> None:
    out = slurm_tmp / "capped"
    job = slurm.launch(["--output_dir", str(out), "--ntasks_per_node", "2", "--entry", STUB,
                        "--job_name", "mp-cap", "--max_requeues", "0", "--",
                        "--steps", "200", "--step_seconds", "0.1"])
    log = out / "logs" / f"{job}.out"
    _wait_for_step(out / "steps_rank0.log", 3, timeout=90, log=log)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    recs = slurm.wait(job, timeout=90)
    text = log.read_text()
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["Restarts"] == "0", (recs, text)
    assert "max_requeues 0): not requeueing" in text, text
    assert "resubmit" in text
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "rank0.json").is_file()
