"""PreemptionHandler without Slurm: signals set the flag, ranks agree through gloo, requeue logic
(scontrol is a stand-in script on PATH that records its arguments)."""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import stat
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[2]


def _load_handler() -> type:
    """The module by path: spawned gloo workers re-import this file, and going through the
    ``megaprompt.engine`` package would make each of them import deepspeed first (seconds)."""
    spec = importlib.util.spec_from_file_location("megaprompt_preemption_unit",
                                                  ROOT / "megaprompt" / "engine" / "preemption.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PreemptionHandler


PreemptionHandler = _load_handler()


@pytest.fixture
def handler():
    h = PreemptionHandler(max_requeues=2)
    h.install()
    yield h
    h.uninstall()


def test_sigusr1_sets_flag(handler: PreemptionHandler) -> None:
    assert not handler.should_stop()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert handler.local_flag and handler.received == signal.SIGUSR1
    assert handler.should_stop() and handler.should_stop()      # stays set


def test_sigterm_sets_flag_and_uninstall_restores(handler: PreemptionHandler) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    assert handler.should_stop() and handler.received == signal.SIGTERM
    handler.uninstall()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


def test_importable_from_the_package() -> None:
    from megaprompt.engine import preemption

    assert preemption.PreemptionHandler.__init__.__doc__ == PreemptionHandler.__init__.__doc__
    assert (ROOT / "megaprompt" / "engine" / "preemption.py").samefile(preemption.__file__)


def test_job_id_and_restart_count() -> None:
    assert PreemptionHandler.job_id({}) is None
    assert PreemptionHandler.job_id({"SLURM_JOB_ID": "17"}) == "17"
    assert PreemptionHandler.job_id({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "10",
                                     "SLURM_ARRAY_TASK_ID": "3"}) == "10_3"
    assert PreemptionHandler.restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    assert PreemptionHandler.restart_count({}) == 0


@pytest.fixture
def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    record = tmp_path / "calls.txt"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/bash\necho "$@" >> {record}\n[ "$2" = 99 ] && {{ echo boom >&2; exit 1; }}\n'
                      'exit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return record


def test_requeue(fake_scontrol: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = PreemptionHandler(max_requeues=2)
    caplog.set_level("INFO")
    assert not h.requeue({})                                      # not under Slurm
    assert "not under Slurm" in caplog.text
    assert h.requeue({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3",
                      "SLURM_RESTART_COUNT": "1"})
    assert fake_scontrol.read_text().splitlines() == ["requeue 10_3"]
    assert "requeued job 10_3 (restart 2 of at most 2)" in caplog.text
    assert not h.requeue({"SLURM_JOB_ID": "18", "SLURM_RESTART_COUNT": "2"})   # cap reached
    assert "max_requeues 2): not requeueing" in caplog.text
    assert not h.requeue({"SLURM_JOB_ID": "99"})                  # scontrol fails
    assert "boom" in caplog.text
    assert fake_scontrol.read_text().splitlines() == ["requeue 10_3", "requeue 99"]


def _agree_worker(rank: int, world: int, port: int, queue: "mp.SimpleQueue") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    h = PreemptionHandler()
    h.install()
    stopped_at = None
    for step in range(1, 20):
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)            # only rank 1 gets the signal
        if h.should_stop():
            stopped_at = step
            break
    queue.put((rank, stopped_at, h.received))
    dist.destroy_process_group()


def test_ranks_agree_over_gloo() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_agree_worker, args=(2, port, queue), nprocs=2, join=True, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    assert results == [(0, 3, None), (1, 3, signal.SIGUSR1)]
