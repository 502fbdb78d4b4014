"""Fixtures for the Slurm launcher tests.

``slurm`` (session scope) makes sure a real Slurm answers: if ``sinfo`` fails it runs
``.ci/slurm_setup.sh`` when running as root with apt available, otherwise the test is skipped with the
reason. Tests that need it are marked ``@pytest.mark.slurm`` (deselect with ``-m "not slurm"``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / ".ci" / "slurm_setup.sh"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running Slurm cluster (see .ci/slurm_setup.sh)")


def _sinfo_ok() -> tuple[bool, str]:
    if shutil.which("sinfo") is None:
        return False, "sinfo not installed"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"sinfo failed: {exc}"
    states = proc.stdout.split()
    if proc.returncode != 0:
        return False, f"sinfo failed: {proc.stderr.strip()}"
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return False, f"no usable node (states: {states})"
    return True, "ok"


@dataclass
class Slurm:
    """Small helpers around the real Slurm commands."""

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc.stdout

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job -o`` records of a job (all elements of an array)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        recs = []
        for line in out.splitlines():
            rec = {}
            for tok in line.split():
                k, _, v = tok.partition("=")
                rec.setdefault(k, v)
            if rec.get("JobId"):
                recs.append(rec)
        return recs

    def wait(self, job_id: str, timeout: float, n_elements: int = 1) -> list[dict[str, str]]:
        """Poll until every record of ``job_id`` is in a final state; returns the records."""
        deadline = time.monotonic() + timeout
        recs: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            recs = self.jobs(job_id)
            if len(recs) >= n_elements and all(r.get("JobState") in FINAL_STATES for r in recs):
                return recs
            time.sleep(1)
        # Python tasks run with PYTHONFAULTHANDLER=1 (see launch): SIGABRT makes them dump their stacks
        # into the job log before the job is cancelled.
        self.run("scancel", "--signal=ABRT", job_id, check=False)
        time.sleep(3)
        self.run("scancel", job_id, check=False)
        raise TimeoutError(f"job {job_id} not finished after {timeout}s: {recs}")

    def launch(self, args: Sequence[str], cwd: Path = ROOT) -> str:
        """``python -m megaprompt.launch ARGS`` -> job id (from its stdout)."""
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}      # sbatch exports it to the job
        proc = subprocess.run(["python", "-m", "megaprompt.launch", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=120, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"launch failed: {proc.stderr}")
        return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    ok, why = _sinfo_ok()
    if not ok:
        if os.geteuid() == 0 and shutil.which("apt-get") and SETUP.is_file():
            proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
            ok, why2 = _sinfo_ok()
            if not ok:
                pytest.skip(f"Slurm not running ({why}) and .ci/slurm_setup.sh did not bring it up "
                            f"({why2}): {proc.stdout[-800:]}{proc.stderr[-800:]}")
        else:
            pytest.skip(f"Slurm not running ({why}) and cannot run .ci/slurm_setup.sh "
                        "(needs root and apt-get)")
    return Slurm()


@pytest.fixture
def slurm_tmp() -> Path:
    """A scratch directory visible to the Slurm daemons (same machine; tmp_path works too, but this one
    is kept on failure for inspection)."""
    base = Path(os.environ.get("MEGAPROMPT_SLURM_TMP", "/tmp/megaprompt-slurm-tests"))
    base.mkdir(parents=True, exist_ok=True)
    path = Path(subprocess.run(["mktemp", "-d", "-p", str(base)], capture_output=True, text=True,
                               check=True).stdout.strip())
    return path
