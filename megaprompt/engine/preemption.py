"""Preemption / time-limit handling inside the training processes.

Slurm warns a job before its time limit (``#SBATCH --signal=B:USR1@N``); the batch script rendered by
``megaprompt.launch`` forwards that SIGUSR1 to every rank (srun forwards signals to its tasks, see
https://slurm.schedmd.com/srun.html "SIGNALS AND ESCAPE SEQUENCES"). Scheduler-initiated kills arrive as
SIGTERM (followed by SIGKILL after ``KillWait``). Usage in a training loop::

    handler = PreemptionHandler(max_requeues=args.max_requeues)
    handler.install()
    for step in ...:
        ...                                   # one optimizer step
        if handler.should_stop():             # collective: every rank, every step boundary
            save_resume_checkpoint()          # all ranks (ZeRO-3 shards)
            if rank == 0:
                handler.requeue()
            break

The signal handler only sets a flag (Python runs it between bytecodes in the main thread, so this is the
async-signal-safe pattern from https://docs.python.org/3/library/signal.html). ``should_stop`` all-reduces
the flag with MAX over ``torch.distributed`` so every rank stops at the same step even when the signal
reached only some of them. ``requeue`` runs ``scontrol requeue`` (https://slurm.schedmd.com/scontrol.html)
for the job, or for the array element ``<array_job_id>_<task_id>``, while ``SLURM_RESTART_COUNT`` (set by
Slurm on requeued jobs) is below ``max_requeues``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from types import FrameType
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class PreemptionHandler:
    """Turns SIGUSR1/SIGTERM into a stop-at-the-next-step-boundary request agreed by all ranks."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM),
                 max_requeues: int = 3) -> None:
        self.signals = tuple(signals)
        self.max_requeues = int(max_requeues)
        self._flag = False
        self.received: int | None = None         # first signal number seen by this process
        self._previous: dict[int, _Handler] = {}
        self._stopped_logged = False

    # ---- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags: no logging, locks or I/O inside a signal handler.
        if self.received is None:
            self.received = signum
        self._flag = True

    def install(self) -> None:
        """Install the flag-setting handlers (main thread only). Idempotent."""
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        log.info("preemption handler installed for %s (max requeues %d)",
                 ", ".join(signal.Signals(s).name for s in self.signals), self.max_requeues)

    def uninstall(self) -> None:
        """Restore the handlers that were there before ``install``."""
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()

    def request_stop(self) -> None:
        """Ask for a stop as if a signal had arrived (tests, or a watchdog thread)."""
        self._flag = True

    @property
    def local_flag(self) -> bool:
        """Whether this process received a signal (no communication)."""
        return self._flag

    # ---- agreement -------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """COLLECTIVE when torch.distributed is initialized: every rank must call it at every step
        boundary. Returns True on all ranks as soon as any rank received a signal."""
        from megaprompt.engine.distributed import any_true
        flag = any_true(self._flag)
        if flag and not self._flag:
            self._flag = True               # remember the agreed decision locally
        if flag and not self._stopped_logged:
            self._stopped_logged = True
            why = signal.Signals(self.received).name if self.received is not None else "another rank"
            log.warning("preemption: stop requested (%s): saving a resume checkpoint at this step", why)
        return flag

    # ---- requeue ---------------------------------------------------------------------------------
    @staticmethod
    def job_id(env: Mapping[str, str] | None = None) -> str | None:
        """The id ``scontrol requeue`` needs: ``<array_job>_<task>`` for array elements, else the job id;
        None outside Slurm."""
        env = os.environ if env is None else env
        if not env.get("SLURM_JOB_ID"):
            return None
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return env["SLURM_JOB_ID"]

    @staticmethod
    def restart_count(env: Mapping[str, str] | None = None) -> int:
        env = os.environ if env is None else env
        try:
            return int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        except ValueError:
            return 0

    def requeue(self, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> bool:
        """Rank 0, after the resume checkpoint is saved: requeue this Slurm job (or array element).

        Returns True when ``scontrol requeue`` succeeded; False outside Slurm, at the requeue cap, or
        when scontrol failed (each case is logged). Slurm then ends this job; the requeued one resumes
        with ``--resume auto``."""
        job = self.job_id(env)
        if job is None:
            log.warning("preemption: not under Slurm (no SLURM_JOB_ID): not requeueing; "
                        "rerun with --resume auto to continue from the checkpoint")
            return False
        restarts = self.restart_count(env)
        if restarts >= self.max_requeues:
            log.warning("preemption: job %s already restarted %d time(s) (max_requeues %d): not "
                        "requeueing; resubmit to resume from the checkpoint", job, restarts,
                        self.max_requeues)
            return False
        try:
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("preemption: scontrol requeue %s failed: %s", job, exc)
            return False
        if proc.returncode != 0:
            log.error("preemption: scontrol requeue %s failed (exit %d): %s", job, proc.returncode,
                      (proc.stderr or proc.stdout).strip())
            return False
        log.warning("preemption: requeued job %s (restart %d of at most %d); it resumes from the "
                    "checkpoint", job, restarts + 1, self.max_requeues)
        return True
