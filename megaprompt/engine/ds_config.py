"""Fill a user's DeepSpeed JSON from the run config.

The JSON files in ``ds_configs/`` hold only ZeRO, offload and precision settings. Everything the run
config owns - micro batch, accumulation, global batch, clipping, optimizer/lr schedule, tensorboard - is
filled in here. A key present in both places with a different value is an error naming both, because
silently preferring either one makes runs irreproducible. ``"auto"`` always defers to the run config.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from megaprompt.config import RunConfig


class DSConfigError(ValueError):
    pass


def read_ds_config(path: str) -> dict[str, Any]:
    """Parse and sanity-check a DeepSpeed JSON; one-line errors name the file and what was expected."""
    p = Path(path)
    if not p.is_file():
        raise DSConfigError(f"--ds_config {path}: no such file (try ds_configs/zero3.json)")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise DSConfigError(f"{path} line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from None
    if not isinstance(cfg, dict):
        raise DSConfigError(f"{path}: expected a JSON object at top level")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise DSConfigError(f"{path}: zero_optimization must be an object")
    for key, value in zero.items():
        if value == "auto" and key != "reduce_bucket_size":
            raise DSConfigError(f"{path}: zero_optimization.{key}='auto' is not supported (only reduce_bucket_size)")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise DSConfigError(f"{path}: zero_optimization.stage={stage!r}, expected 0, 1, 2 or 3")
    for kind in ("offload_optimizer", "offload_param"):
        dev = (zero.get(kind) or {}).get("device", "none")
        if dev not in ("none", "cpu", "nvme"):
            raise DSConfigError(f"{path}: zero_optimization.{kind}.device={dev!r}, expected none, cpu or nvme")
    if (zero.get("offload_param") or {}).get("device", "none") != "none" and stage != 3:
        raise DSConfigError(f"{path}: offload_param needs zero_optimization.stage=3 (got {stage})")
    return cfg


def zero_stage(cfg: dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(cfg: dict[str, Any]) -> bool:
    return (cfg.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none") != "none"


def resolve_precision(precision: str, cfg: dict[str, Any], on_gpu: bool, bf16_ok: bool, path: str) -> str:
    """The run's precision; the JSON may pin bf16/fp16 (must agree with --precision if both are set)."""
    pinned = [k for k in ("bf16", "fp16") if cfg.get(k, {}).get("enabled") is True]
    if precision == "auto":
        if pinned:
            return pinned[0]
        return "bf16" if on_gpu and bf16_ok else "fp32"
    if pinned and pinned[0] != precision:
        raise DSConfigError(f"{path} enables {pinned[0]} but --precision {precision}: set one of them")
    return precision


def _put(cfg: dict[str, Any], key: str, value: Any, flag: str, path: str) -> None:
    if key in cfg and cfg[key] != "auto" and cfg[key] != value:
        raise DSConfigError(f"{path} sets {key}={cfg[key]!r} but the run config has {flag}={value!r}: "
                            f"remove it from the JSON (batch/lr/clipping belong to the run config)")
    cfg[key] = value


def fill_ds_config(cfg: dict[str, Any], run: RunConfig, world_size: int, total_steps: int, precision: str,
                   cpu_accelerator: bool, path: str = "ds_config") -> dict[str, Any]:
    """A complete DeepSpeed config for this run (the input dict is not modified)."""
    t = run.train
    out = copy.deepcopy(cfg)
    _put(out, "train_micro_batch_size_per_gpu", t.batch_size, "--batch_size", path)
    _put(out, "gradient_accumulation_steps", t.grad_accum, "--grad_accum", path)
    global_batch = t.batch_size * t.grad_accum * world_size
    if "train_batch_size" in out and out["train_batch_size"] not in ("auto", global_batch):
        raise DSConfigError(
            f"{path} sets train_batch_size={out['train_batch_size']} but batch_size {t.batch_size} x grad_accum "
            f"{t.grad_accum} x world_size {world_size} = {global_batch}: they must multiply out exactly")
    out["train_batch_size"] = global_batch
    _put(out, "gradient_clipping", t.max_grad_norm, "--max_grad_norm", path)
    for k in ("bf16", "fp16"):
        section = dict(out.get(k, {}))
        section["enabled"] = precision == k
        out[k] = section
    opt_params = {"lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": t.weight_decay}
    if cpu_accelerator and not offloads_optimizer(out):
        opt_params["torch_adam"] = True   # the CPU accelerator has no fused Adam kernel
    if "optimizer" in out:
        user = out["optimizer"].get("params", {})
        if "lr" in user and user["lr"] not in ("auto", t.lr):
            raise DSConfigError(f"{path} sets optimizer.params.lr={user['lr']} but the run config has --lr={t.lr}")
    out["optimizer"] = {"type": "AdamW", "params": opt_params}
    warmup = int(math.ceil(t.warmup_ratio * total_steps))
    # DeepSpeed's WarmupLR rejects warmup_num_steps=0: "no warmup" is one step that starts at the full lr.
    out["scheduler"] = {"type": "WarmupDecayLR", "params": {
        "warmup_min_lr": 0.0 if warmup else t.lr, "warmup_max_lr": t.lr, "warmup_num_steps": max(warmup, 1),
        "total_num_steps": max(total_steps, warmup + 1), "warmup_type": "linear"}}
    out["tensorboard"] = {"enabled": True, "output_path": str(Path(t.output_dir) / "tb"), "job_name": "deepspeed"}
    out.setdefault("steps_per_print", 10**9)   # our own rank-0 logger reports progress
    out.setdefault("wall_clock_breakdown", False)
    return out
