"""The output directory: a lock names its holder and is taken over when stale; any earlier output is checked
for identity (not only checkpoints); ``--resume none`` sets everything aside, config.yaml included; a fork
sets the abandoned future aside, and resume/rotation then follow the run's own history. Real one-process
tiny-bert trainings."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megaprompt.rundir import RunDirLock

ROOT = Path(__file__).resolve().parents[1]
Z3 = str(ROOT / "ds_configs" / "zero3.json")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("MEGAPROMPT_CACHE", str(tmp_path / "cache"))


def args(out: Path, *extra: str) -> list[str]:
    return ["--backbone", "tiny-bert", "--output_dir", str(out), "--ds_config", Z3, "--batch_size", "4",
            "--max_train_examples", "64", "--max_eval_examples", "8", "--prompt_len", "2", "--seed", "5", *extra]


def train(argv: list[str]) -> int:
    from megaprompt.train import main
    return main(argv)


def steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step_*"))


def test_a_second_run_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path, capfd):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, str(ROOT / "megaprompt" / "train.py"),
                               *args(out, "--max_steps", "100000", "--eval_every", "100000")],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / ".lock").is_file() or not (out / ".lock").read_text():
            assert holder.poll() is None, "the first run ended early"
            time.sleep(0.2)
        info = json.loads((out / ".lock").read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        capfd.readouterr()
        # the same run's flags (identity passes); --stop_at_step bounds it should the lock ever let it through
        assert train(args(out, "--max_steps", "100000", "--eval_every", "100000", "--stop_at_step", "2")) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by another run (host {socket.gethostname()}, pid {holder.pid}, " \
            "started " in err[0], err
    finally:
        holder.send_signal(signal.SIGKILL)     # dies holding the lock: no clean-up runs
        holder.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == holder.pid    # the stale holder is still named
    assert train(args(out, "--max_steps", "100000", "--eval_every", "100000", "--stop_at_step", "1")) == 0
    log = (out / "train.log").read_text()
    assert f"took over the stale lock of a run that is gone (host {socket.gethostname()}, pid {holder.pid})" in log
    assert (out / ".lock").read_text() == ""            # released at exit


def test_lock_without_flock_judges_the_recorded_pid(tmp_path, monkeypatch):
    """On a file system without flock, a live pid on this host holds the directory; a dead one does not."""
    import fcntl
    import errno

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    from megaprompt.rundir import RunDirError
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": 0}))
    with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
        RunDirLock(tmp_path).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}))
    lock = RunDirLock(tmp_path).acquire()
    assert lock.stale["pid"] == dead.pid
    lock.release()


def test_identity_covers_an_export_without_checkpoints(tmp_path, capfd):
    """A run killed before its first checkpoint but after an export: another run must not replace them."""
    out = tmp_path / "run"
    assert train(args(out, "--max_steps", "2")) == 0
    import shutil
    shutil.rmtree(out / "checkpoints")
    before = (out / "export" / "prompts" / "shared.safetensors").read_bytes(), (out / "config.yaml").read_text()
    capfd.readouterr()
    assert train(args(out, "--max_steps", "2", "--warmup_ratio", "0.2")) == 2
    assert "holds outputs of another run (warmup_ratio: 0.1 there, 0.2 now)" in capfd.readouterr().err
    assert ((out / "export" / "prompts" / "shared.safetensors").read_bytes(), (out / "config.yaml").read_text()) == before


def test_resume_none_sets_everything_aside_config_included(tmp_path):
    out = tmp_path / "run"
    assert train(args(out, "--max_steps", "2", "--lr", "0.5")) == 0
    old_export = (out / "export" / "prompts" / "shared.safetensors").read_bytes()
    assert train(args(out, "--max_steps", "2", "--resume", "none")) == 0
    aside = sorted(out.glob("previous-*"))
    assert len(aside) == 1
    moved = {p.name for p in aside[0].iterdir()}
    assert {"config.yaml", "train.log", "checkpoints", "export", "metrics.json", "tb"} <= moved
    assert yaml.safe_load((aside[0] / "config.yaml").read_text())["lr"] == 0.5
    assert (aside[0] / "export" / "prompts" / "shared.safetensors").read_bytes() == old_export
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.01


def test_a_fork_sets_the_later_future_aside_and_keeps_its_own_history(tmp_path):
    """Run a to step 6 (checkpoints 2, 4, 6); fork b from a's step 2 with another lr. a's later checkpoints,
    metrics and tb go aside; b's own step_4 and step_6 are kept by rotation (keep 3), HEAD names b's history,
    and --resume auto continues b, not a."""
    out = tmp_path / "run"
    common = ("--max_steps", "6", "--save_every", "2", "--keep_checkpoints", "3", "--eval_every", "2")
    assert train(args(out, *common)) == 0
    assert steps(out) == ["step_2", "step_4", "step_6"]
    fork = out / "checkpoints" / "step_2"
    assert train(args(out, *common, "--lr", "0.05", "--resume", str(fork))) == 0
    aside = sorted(out.glob("previous-*"))
    assert len(aside) == 1
    assert sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == ["HEAD.json", "step_4", "step_6"]
    assert yaml.safe_load((aside[0] / "config.yaml").read_text())["lr"] == 0.01      # the old config kept
    assert steps(out) == ["step_2", "step_4", "step_6"]           # b's, saved and not rotated away
    head = json.loads((out / "checkpoints" / "HEAD.json").read_text())
    state = json.loads((out / "checkpoints" / "step_6" / "state.json").read_text())
    assert head["tag"] == "step_6" and len(head["lineage"]) == 2 and state["lineage"] == head["lineage"]
    optim = "zero_pp_rank_0_mp_rank_00_optim_states.pt"           # fp32 partitions of the trained prompt and head
    assert (out / "checkpoints" / "step_6" / optim).read_bytes() != \
        (aside[0] / "checkpoints" / "step_6" / optim).read_bytes()   # a different trajectory was saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6
    # a later --resume auto with b's config resumes b's step_6 and has nothing left to do
    assert train(args(out, *common, "--lr", "0.05")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
