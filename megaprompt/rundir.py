"""The run directory: one run owns it at a time, and no run loses or mixes up another run's outputs.

Three guarantees, all checked before any heavy work:

* **A lock.** ``<output_dir>/.lock`` is held with ``flock`` for the life of the process that owns the run
  (global rank 0), and names its holder (host, pid, start time). A second run is refused with that name.
  The kernel drops the lock when its process dies, so a lock file whose lock is free is stale: the next run
  takes it over and says so. Where ``flock`` is unavailable (some network file systems), the holder's pid is
  checked on the same host instead.
* **Identity.** Every output a run writes (``OUTPUTS``) belongs to the run whose ``config.yaml`` is beside
  it. A run whose identity fields differ (``megaprompt.config.identity_keys``: declared per field, not kept
  by hand) is refused, whatever outputs exist - not only checkpoints.
* **Setting aside, never deleting.** ``--resume none`` moves every earlier output, ``config.yaml`` and the log
  included, to ``previous-<time>/``. A fork (``--resume PATH`` to an earlier step) moves the outputs that
  belong to the abandoned future (later checkpoints, metrics, TensorBoard, an export from a later step).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from megaprompt.errors import UserError
from megaprompt.files import atomic_write_text

# Everything a run writes into its directory (checkpoint lineage lives inside checkpoints/).
OUTPUTS = ("config.yaml", "train.log", "checkpoints", "export", "metrics.json", "tb", "predictions")
LOCK_NAME = ".lock"


class RunDirError(UserError):
    """The output directory cannot be used as asked; the message is one line and says what to do."""


# ---- identity ------------------------------------------------------------------------------------------------
def earlier_outputs(out: Path) -> list[Path]:
    return [out / n for n in OUTPUTS if (out / n).exists()]


def check_identity(out: Path, flat: dict[str, Any], keys: list[str], defaults: dict[str, Any]) -> None:
    """Refuse an output directory that holds another run's outputs (``--resume auto`` only). A key missing from
    an older ``config.yaml`` had its default then."""
    found = earlier_outputs(out)
    if not found:
        return
    hint = "use another --output_dir, --resume none to set the earlier run aside, or --resume PATH"
    saved = out / "config.yaml"
    if not saved.is_file():
        raise RunDirError(f"{out} holds {found[0].name} of an unknown run (no config.yaml); {hint}")
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise RunDirError(f"{saved}: unreadable ({type(err).__name__}); {hint}") from None
    if not isinstance(old, dict):
        raise RunDirError(f"{saved}: expected a mapping of config keys; {hint}")
    for key in keys:
        before = old.get(key, defaults.get(key))
        if key in flat and before != flat[key]:
            raise RunDirError(f"{out} holds outputs of another run ({key}: {before!r} there, {flat[key]!r} "
                              f"now); {hint}")


# ---- setting aside -------------------------------------------------------------------------------------------
def set_aside(out: Path, paths: list[Path]) -> Path | None:
    """Move ``paths`` (inside ``out``) to a fresh ``out/previous-<time>[-k]/``; returns it (None if nothing)."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out / f"previous-{stamp}"
    k = 1
    while dest.exists():                 # two set-asides in one second keep both
        k += 1
        dest = out / f"previous-{stamp}-{k}"
    dest.mkdir(parents=True)
    for p in paths:
        rel = p.relative_to(out)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        p.rename(dest / rel)
    return dest


# ---- the lock ------------------------------------------------------------------------------------------------
def _holder_text(info: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {started}"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: list["RunDirLock"] = []


def release_all() -> None:
    """Release every lock this process holds (end of a run; in-process reruns in tests and notebooks)."""
    while _HELD:
        _HELD.pop().release()


class RunDirLock:
    """``flock`` on ``<out>/.lock`` held until ``release`` (or process exit)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.stale: dict[str, Any] = {}     # the previous holder, when its lock had been left behind

    def acquire(self) -> "RunDirLock":
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{self.out} is in use by another run ({_holder_text(_read_holder(self.path))}); "
                              f"wait for it to finish or use another --output_dir") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            self._check_without_flock(me)     # no flock on this file system: judge by the recorded holder
        self.stale = _read_holder(self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        _HELD.append(self)
        return self

    def _check_without_flock(self, me: dict[str, Any]) -> None:
        info = _read_holder(self.path)
        if not info:
            return
        same_host = info.get("host") == me["host"]
        if not same_host or _pid_alive(int(info.get("pid", -1))):
            where = "" if same_host else f"; if that run is gone, delete {self.path}"
            raise RunDirError(f"{self.out} is in use by another run ({_holder_text(info)}){where}")

    def release(self) -> None:
        """Free the lock. The file stays (empty): unlinking it would let a waiter lock a deleted inode."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)        # closing drops the flock
            self.fd = None


def write_config(out: Path, text: str) -> None:
    atomic_write_text(out / "config.yaml", text)


__all__ = ["LOCK_NAME", "OUTPUTS", "RunDirError", "RunDirLock", "check_identity", "earlier_outputs", "release_all",
           "set_aside", "write_config"]
