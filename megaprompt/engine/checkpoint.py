"""Resume checkpoints: DeepSpeed's sharded save, made crash-safe and pickle-free on load.

Layout: ``<output_dir>/checkpoints/step_<N>/`` holds DeepSpeed's files for that tag (only trainable
parameters and their optimizer state: ``exclude_frozen_parameters=True``), ``rng_rank<R>.safetensors`` with
every rank's RNG states, ``state.json`` (step, best metric, ...) and - written last, by rank 0, after a
barrier - ``COMPLETE``. A tag without ``COMPLETE`` is a save that was interrupted: it is ignored by
``--resume auto`` and deleted by the next rotation, so the previous checkpoint stays usable.

DeepSpeed's loader calls ``torch.load(weights_only=False)``. We swap in ``_safe_load``, which uses
``weights_only=True`` with an allow-list of the few plain types DeepSpeed stores (enums, its config
objects are never in the files we write), so a tampered checkpoint cannot execute code.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from megaprompt.engine.distributed import barrier, is_rank0, log

TAG_RE = re.compile(r"^step_(\d+)$")
MARKER = "COMPLETE"


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


def find_resume(ckpt_dir: Path, resume: str) -> Path | None:
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / MARKER).is_file():
            raise ValueError(f"--resume {resume}: not a complete megaprompt checkpoint (no {MARKER} marker)")
        return p
    tags = complete_tags(ckpt_dir)
    return tags[-1][1] if tags else None


def save(engine: Any, ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Every rank must call this (DeepSpeed's save is collective)."""
    tag = f"step_{step}"
    path = ckpt_dir / tag
    if is_rank0() and path.exists():
        shutil.rmtree(path)        # a stale, incomplete save of the same step
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False, exclude_frozen_parameters=True)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    save_file(_rng_tensors(), str(path / f"rng_rank{rank}.safetensors"))
    barrier()
    if is_rank0():
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        (path / "state.json").write_text(json.dumps({**state, "step": step, "world": world}, indent=2))
        (path / MARKER).write_text("ok\n")   # last: from here on the checkpoint counts
        _rotate(ckpt_dir, keep)
        log.info("saved resume checkpoint %s", path)
    barrier()
    return path


def _rotate(ckpt_dir: Path, keep: int) -> None:
    tags = complete_tags(ckpt_dir)
    newest = tags[-1][0] if tags else -1
    for step, p in tags[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.iterdir():     # interrupted saves older than the newest complete one
        m = TAG_RE.match(p.name)
        if m and not (p / MARKER).exists() and int(m.group(1)) < newest:
            shutil.rmtree(p, ignore_errors=True)


def load(engine: Any, path: Path) -> dict[str, Any]:
    """Restore trainable weights, optimizer, scheduler and RNG; returns the saved trainer state."""
    _install_safe_loader(engine)
    engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False,
                           load_optimizer_states=True, load_lr_scheduler_states=True)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    rng = path / f"rng_rank{rank}.safetensors"
    if rng.is_file():
        _set_rng(load_file(str(rng)))
    else:
        log.warning("%s has no RNG state for rank %d (different world size?): dropout masks will differ", path, rank)
    state = json.loads((path / "state.json").read_text())
    state.pop("world", None)
    return state


def _safe_load(path: str, map_location: Any = None) -> Any:
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    safe = [ZeroStageEnum, fragment_address]
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler
        safe += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    with torch.serialization.safe_globals(safe):
        return torch.load(path, map_location=map_location, weights_only=True)


def _install_safe_loader(engine: Any) -> None:
    ce = getattr(engine, "checkpoint_engine", None)
    if ce is not None:
        ce.load = _safe_load
    opt = getattr(engine, "optimizer", None)
    if opt is not None and getattr(opt, "checkpoint_engine", None) is not None:
        opt.checkpoint_engine.load = _safe_load
