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

from megaprompt.errors import UserError
from megaprompt.config import RunConfig
from megaprompt.files import read_text


class DSConfigError(UserError):
    pass


# Sections DeepSpeed reads as JSON objects: any other type there is a user's typo, not a DeepSpeed crash.
OBJECT_SECTIONS = ("zero_optimization", "bf16", "fp16", "optimizer", "scheduler", "checkpoint", "nebula",
                   "datastates", "tensorboard", "activation_checkpointing", "flops_profiler", "wandb", "csv_monitor",
                   "comms_logger", "aio", "data_efficiency", "compression_training", "amp")
NUMBER_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
               "gradient_clipping", "steps_per_print")
# Options whose loaders bypass torch.load (or commit saves asynchronously): with them a checkpoint directory
# could run code on resume, or a COMPLETE marker could precede the data it vouches for.
UNSAFE = (
    (("checkpoint", "load_universal"), lambda v: v is True or str(v).lower() == "true",
     "DeepSpeed's universal-checkpoint loader unpickles files with torch.load(weights_only=False), so a "
     "checkpoint directory could run code; megaprompt resumes its own checkpoints pickle-free: remove it"),
    (("checkpoint", "writer"), lambda v: v is not None,
     "DeepSpeed's checkpoint writer engines (fast, decoupled, mock) write outside megaprompt's crash-safe save "
     "(a decoupled write can finish after the COMPLETE marker; mock writes nothing): remove it"),
    (("nebula", "enabled"), lambda v: v is True or str(v).lower() == "true",
     "Nebula checkpoints are loaded with its own unpickler, which can run code: remove it"),
    (("datastates", "enabled"), lambda v: v is True or str(v).lower() == "true",
     "the DataStates checkpoint engine loads files outside megaprompt's pickle-free loader: remove it"),
)


def _get(cfg: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(cfg, dict) or k not in cfg:
            return None
        cfg = cfg[k]
    return cfg


def read_ds_config(path: str) -> dict[str, Any]:
    """Parse and sanity-check a DeepSpeed JSON; one-line errors name the file, the key and what was expected."""
    p = Path(path)
    if not p.is_file():
        raise DSConfigError(f"--ds_config {path}: no such file (try ds_configs/zero3.json)")
    try:
        cfg = json.loads(read_text(p))
    except json.JSONDecodeError as err:
        raise DSConfigError(f"{path}:{err.lineno}: malformed JSON at column {err.colno} ({err.msg})") from None
    except ValueError as err:        # not UTF-8
        raise DSConfigError(str(err)) from None
    if not isinstance(cfg, dict):
        raise DSConfigError(f"{path}: expected a JSON object at top level")
    for key in OBJECT_SECTIONS:
        if key in cfg and not isinstance(cfg[key], dict):
            raise DSConfigError(f"{path}: {key} must be an object, got {type(cfg[key]).__name__} {cfg[key]!r}")
    for key in NUMBER_KEYS:
        v = cfg.get(key)
        if v is not None and v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float))
                                             or not math.isfinite(v) or v < 0):
            raise DSConfigError(f"{path}: {key}={v!r}, expected a non-negative number or \"auto\"")
    for keys, unsafe, why in UNSAFE:
        if unsafe(_get(cfg, keys)):
            raise DSConfigError(f"{path}: {'.'.join(keys)} is refused: {why}")
    for key in ("bf16", "fp16"):
        enabled = cfg.get(key, {}).get("enabled", "auto")
        if enabled not in (True, False, "auto"):
            raise DSConfigError(f"{path}: {key}.enabled={enabled!r}, expected true, false or \"auto\"")
    zero = cfg.get("zero_optimization", {})
    for key, value in zero.items():
        if value == "auto" and key != "reduce_bucket_size":
            raise DSConfigError(f"{path}: zero_optimization.{key}='auto' is not supported (only reduce_bucket_size)")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise DSConfigError(f"{path}: zero_optimization.stage={stage!r}, expected 0, 1, 2 or 3")
    for kind in ("offload_optimizer", "offload_param"):
        section = zero.get(kind) or {}
        if not isinstance(section, dict):
            raise DSConfigError(f"{path}: zero_optimization.{kind} must be an object like {{\"device\": \"cpu\"}}, "
                                f"got {section!r}")
        dev = section.get("device", "none")
        if dev not in ("none", "cpu", "nvme"):
            raise DSConfigError(f"{path}: zero_optimization.{kind}.device={dev!r}, expected none, cpu or nvme")
    if (zero.get("offload_param") or {}).get("device", "none") != "none" and stage != 3:
        raise DSConfigError(f"{path}: offload_param needs zero_optimization.stage=3 (got {stage})")
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                "stage3_param_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance"):
        v = zero.get(key)
        if v is not None and v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise DSConfigError(f"{path}: zero_optimization.{key}={v!r}, expected a non-negative number")
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
