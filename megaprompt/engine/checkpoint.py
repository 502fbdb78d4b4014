"""Resume checkpoints: DeepSpeed's sharded save, made crash-safe, lineage-aware and pickle-free on load.

Layout: ``<output_dir>/checkpoints/step_<N>/`` holds DeepSpeed's files for that tag (only trainable
parameters and their optimizer state: ``exclude_frozen_parameters=True``), ``rng_rank<R>.safetensors`` with
every rank's RNG states, ``state.json`` (step, best metric, lineage, world size, ZeRO stage) and - written last,
by rank 0, after a barrier - ``COMPLETE``. A tag without ``COMPLETE`` is a save that was interrupted: it is
ignored by ``--resume auto`` and deleted by the next rotation, so the previous checkpoint stays usable.

Lineage: every trajectory has an id; a fresh start creates one and a fork (``--resume PATH``) appends one, so
``state["lineage"]`` is the run's own history. ``HEAD.json`` names the newest complete checkpoint and its
lineage; ``--resume auto`` and rotation follow it, never merely the largest step number.

No pickle runs: DeepSpeed calls ``torch.load(weights_only=False)`` in several places (its checkpoint engine,
the ZeRO-3 universal loader, ...). While ``load`` runs, ``torch.load`` itself is replaced by ``_safe_load``,
which forces ``weights_only=True`` with an allow-list of the few plain types DeepSpeed stores; a file that
needs anything else is refused with one line naming it. ``read_ds_config`` refuses the options whose loaders
bypass ``torch.load`` altogether.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from megaprompt.errors import UserError
from megaprompt.engine.distributed import barrier, is_rank0, log
from megaprompt.files import atomic_write_text

TAG_RE = re.compile(r"^step_(\d+)$")
MARKER = "COMPLETE"
HEAD = "HEAD.json"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


def _rng_tensors() -> dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        # (pos, has_gauss, cached_gaussian) of numpy's MT19937 state
        "numpy_meta": torch.tensor([np_state[2], np_state[3], np_state[4]], dtype=torch.float64),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["torch"])
    meta = t["numpy_meta"].tolist()
    np.random.set_state(("MT19937", t["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]), meta[2]))
    random.setstate((3, tuple(int(x) for x in t["python"].tolist()), None))
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda"])


def new_lineage_id() -> str:
    return uuid.uuid4().hex[:12]


def complete_tags(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        m = TAG_RE.match(p.name)
        if m and (p / MARKER).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, with a one-line error naming it when malformed."""
    f = path / "state.json"
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing (the checkpoint is incomplete)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{f}: not valid JSON ({type(err).__name__}); move {path.name} aside to resume from "
                              f"an earlier checkpoint") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{f}: expected an object with an integer 'step'")
    return state


def read_head(ckpt_dir: Path) -> dict[str, Any] | None:
    f = ckpt_dir / HEAD
    if not f.is_file():
        return None
    try:
        head = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{f}: not valid JSON; delete it to resume from the newest checkpoint") from None
    if not isinstance(head, dict) or not isinstance(head.get("lineage"), list):
        raise CheckpointError(f"{f}: expected an object with a 'lineage' list")
    return head


def lineage_of(state: dict[str, Any]) -> list[str]:
    """A checkpoint's history; checkpoints written before lineages existed share the history ``legacy``."""
    lineage = state.get("lineage")
    return [str(x) for x in lineage] if isinstance(lineage, list) and lineage else ["legacy"]


def history(ckpt_dir: Path, lineage: list[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints of this run's own history: those whose trajectory id is in ``lineage``. A complete
    checkpoint whose state.json is unreadable is an error (never silently skipped: a fresh start would follow)."""
    mine = set(lineage)
    return [(s, p) for s, p in complete_tags(ckpt_dir) if lineage_of(read_state(p))[-1] in mine]


def find_resume(ckpt_dir: Path, resume: str) -> Path | None:
    """The checkpoint ``--resume`` names: None (fresh start), an explicit path, or for ``auto`` the newest complete
    checkpoint of the history ``HEAD.json`` records (the newest complete one where there is no HEAD yet)."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / MARKER).is_file():
            raise CheckpointError(f"--resume {resume}: not a complete megaprompt checkpoint (no {MARKER} marker)")
        return p
    head = read_head(ckpt_dir)
    tags = history(ckpt_dir, head["lineage"]) if head else complete_tags(ckpt_dir)
    return tags[-1][1] if tags else None


def save(engine: Any, ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Every rank must call this (DeepSpeed's save is collective). ``state["lineage"]`` names the history."""
    tag = f"step_{step}"
    path = ckpt_dir / tag
    if is_rank0() and path.exists():
        shutil.rmtree(path)        # a stale, incomplete save of the same step (or a set-aside fork's leftover)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False, exclude_frozen_parameters=True)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    save_file(_rng_tensors(), str(path / f"rng_rank{rank}.safetensors"))
    barrier()
    if is_rank0():
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        zero = int(getattr(engine, "zero_optimization_stage", lambda: 0)())
        atomic_write_text(path / "state.json", json.dumps({**state, "step": step, "world": world,
                                                           "zero_stage": zero}, indent=2))
        (path / MARKER).write_text("ok\n")   # last: from here on the checkpoint counts
        atomic_write_text(ckpt_dir / HEAD, json.dumps({"tag": tag, "lineage": state["lineage"]}) + "\n")
        _rotate(ckpt_dir, keep, state["lineage"])
        log.info("saved resume checkpoint %s", path)
    barrier()
    return path


def _rotate(ckpt_dir: Path, keep: int, lineage: list[str]) -> None:
    """Keep the ``keep`` newest checkpoints of this run's history; never touch another history's."""
    mine = history(ckpt_dir, lineage)
    for _, p in mine[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    newest = mine[-1][0] if mine else -1
    for p in ckpt_dir.iterdir():     # interrupted saves older than the newest complete one
        m = TAG_RE.match(p.name)
        if m and not (p / MARKER).exists() and int(m.group(1)) < newest:
            shutil.rmtree(p, ignore_errors=True)


def load(engine: Any, path: Path) -> dict[str, Any]:
    """Restore trainable weights, optimizer, scheduler and RNG; returns the saved trainer state.

    Every ``torch.load`` DeepSpeed makes meanwhile is the pickle-free one (``safe_torch_load``).
    """
    with safe_torch_load():
        engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False,
                               load_optimizer_states=True, load_lr_scheduler_states=True)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    rng = path / f"rng_rank{rank}.safetensors"
    if rng.is_file():
        try:
            _set_rng(load_file(str(rng)))
        except Exception as err:    # safetensors raises its own error types for foreign bytes
            raise CheckpointError(f"{rng}: not a megaprompt RNG file ({type(err).__name__})") from None
    else:
        log.warning("%s has no RNG state for rank %d (different world size?): dropout masks will differ", path, rank)
    state = read_state(path)
    state.pop("world", None)
    state.pop("zero_stage", None)
    return state


def _safe_globals() -> list[Any]:
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    safe: list[Any] = [ZeroStageEnum, fragment_address]
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        safe += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    return safe


_torch_load = torch.load     # the real one, captured at import


def _safe_load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``torch.load`` restricted to tensors and plain containers, whatever the caller asked for."""
    kwargs.pop("weights_only", None)
    kwargs.pop("pickle_module", None)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return _torch_load(f, map_location, *args, weights_only=True, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as err:
        name = getattr(f, "name", f)
        raise CheckpointError(f"{name}: refused to load: not a plain-tensor checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else 'unreadable'}); nothing in it ran"
                              ) from None


@contextlib.contextmanager
def safe_torch_load() -> Iterator[None]:
    """Within the block, every ``torch.load`` (DeepSpeed's included, which pass ``weights_only=False``) is
    ``_safe_load``. ``torch.serialization.load`` is the same function object and is replaced too."""
    saved = torch.load, torch.serialization.load
    torch.load = torch.serialization.load = _safe_load
    try:
        yield
    finally:
        torch.load, torch.serialization.load = saved
