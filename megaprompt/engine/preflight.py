"""Every check that needs neither a process group nor a model, run before either exists.

Each rank runs ``preflight`` on the same inputs and reaches the same verdict, so a mistake stops every rank
at once, in seconds, with one line - before DeepSpeed builds or loads an op, before the backbone is loaded,
and before anything is written to the output directory. What it checks:

* the DeepSpeed JSON (types, refused options), the precision against the device;
* the backbone config (no weights): family, position limit, ``prompt_layers`` against its depth;
* the task, its data files' presence, the verbalizer's preconditions;
* the output directory: writable, not another run's (identity), and the checkpoint ``--resume`` points at
  (complete, same world size, same ZeRO stage).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megaprompt.backbones.load import load_config
from megaprompt.cli import one_line
from megaprompt.config import FIELDS, RunConfig, identity_keys
from megaprompt.engine import checkpoint as ckpt
from megaprompt.engine import ds_config as dsc
from megaprompt.engine.distributed import setup_env
from megaprompt.errors import UserError
from megaprompt.files import check_writable
from megaprompt.heads.verbalizer import MLM_MODEL_TYPES, has_mlm_head, resolve_label_words
from megaprompt.prompts import parse_layers
from megaprompt.rundir import check_identity
from megaprompt.tasks import get_task


class RunError(UserError):
    """A user mistake detected before (or while) building a run; the message is one line."""


@dataclass
class Preflight:
    """What the checks learned, so building does not redo them."""

    raw_ds: dict[str, Any]
    hf_config: Any
    task: Any
    label_words: list[str]
    precision: str
    world: int
    resume_from: Path | None      # the checkpoint to load (``--resume auto`` resolved), None for a fresh start
    fork: bool                    # ``--resume PATH``: a new trajectory from an explicit checkpoint


def position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in ("roberta", "xlm-roberta"):
        limit -= config.pad_token_id + 1     # RoBERTa positions start after the padding index
    return limit


def check_positions(config: Any, backbone: str, max_seq_len: int, method: str, prompt_len: int) -> None:
    limit = position_limit(config)
    need = max_seq_len + (prompt_len if method == "lester" else 0)
    if limit and need > limit:
        extra = f" + prompt_len {prompt_len} (lester prompts take positions)" if method == "lester" else ""
        raise RunError(f"max_seq_len {max_seq_len}{extra} = {need} exceeds {backbone}'s {limit} positions")


def check_verbalizer(cfg: RunConfig, task: Any, hf_config: Any) -> list[str]:
    """The verbalizer's preconditions, as one-line errors; returns the label words, one per label."""
    if task.head != "cls":
        raise RunError(f"--head_type verbalizer needs a classification task; {task.name} has a {task.head!r} head")
    if not has_mlm_head(hf_config):
        raise RunError(f"--head_type verbalizer needs an encoder with an MLM head ({', '.join(MLM_MODEL_TYPES)}); "
                       f"{cfg.backbone} is {hf_config.model_type}")
    if cfg.prompt.method == "head":
        raise RunError("--head_type verbalizer with --method head has nothing to train (the MLM head stays "
                       "frozen); use pt2, lester or ft")
    return resolve_label_words(cfg.train.label_words, task.label_names)


def check_precision(precision: str, raw_ds: dict[str, Any], path: str) -> str:
    """The run's precision, refused when the device cannot run it (fp16 on the CPU, bf16 on an old GPU)."""
    from deepspeed.accelerator import get_accelerator   # accelerator detection only: builds no op

    acc = get_accelerator()
    on_gpu = acc.device_name() != "cpu"
    bf16_ok = acc.is_bf16_supported() if on_gpu else True
    resolved = dsc.resolve_precision(precision, raw_ds, on_gpu, bf16_ok, path)
    if resolved == "fp16" and not on_gpu:
        raise RunError(f"precision fp16 ({'--precision' if precision == 'fp16' else path}): the CPU accelerator has "
                       f"no fp16 training; use fp32 or bf16")
    if resolved == "bf16" and on_gpu and not bf16_ok:
        raise RunError(f"precision bf16 ({'--precision' if precision == 'bf16' else path}): this GPU has no bf16; "
                       f"use fp16 or fp32")
    return resolved


def check_resume(cfg: RunConfig, out: Path, raw_ds: dict[str, Any], world: int) -> Path | None:
    """The checkpoint ``--resume`` names must be complete, written by as many ranks (the data order and ZeRO
    partitions depend on it) and by the same ZeRO stage (its file layout differs)."""
    path = ckpt.find_resume(out / "checkpoints", cfg.train.resume)
    if path is None:
        return None
    state = ckpt.read_state(path)
    saved = state.get("world")
    if saved is not None and saved != world:
        raise RunError(f"checkpoint {path} was written by {saved} ranks, this job has {world}: relaunch with "
                       f"{saved} ranks, or --resume none to start over")
    stage, now = state.get("zero_stage"), dsc.zero_stage(raw_ds)
    if stage is not None and stage != now:
        raise RunError(f"checkpoint {path} was written with ZeRO stage {stage}, {cfg.train.ds_config} has stage "
                       f"{now}: use a ds_config with stage {stage}, or --resume none to start over")
    return path


def preflight(cfg: RunConfig) -> Preflight:
    """All cheap checks, in the order a user would fix them; raises ``RunError`` (one line)."""
    setup_env()
    world = int(os.environ["WORLD_SIZE"])
    t, d, p = cfg.train, cfg.data, cfg.prompt
    out = Path(t.output_dir)
    try:
        raw_ds = dsc.read_ds_config(t.ds_config)
        precision = check_precision(t.precision, raw_ds, t.ds_config)
        hf_config = load_config(cfg.backbone)
        check_positions(hf_config, cfg.backbone, d.max_seq_len, p.method, p.prompt_len)
        if p.method == "pt2":
            parse_layers(p.prompt_layers, hf_config.num_hidden_layers)
        task = get_task(d.task, data_dir=d.data_dir)
        if d.data_dir is not None:
            for split in ("train", "dev"):
                task.require_files(d.data_dir, split)  # presence only: reading comes later, on rank 0 first
        label_words = check_verbalizer(cfg, task, hf_config) if t.head_type == "verbalizer" else []
        check_writable(out, "--output_dir")
        if t.resume == "auto":
            defaults = {k: v for k, (_, v) in FIELDS.items()}
            check_identity(out, cfg.flat(), identity_keys(), defaults)
        resume_from = check_resume(cfg, out, raw_ds, world)
    except RunError:
        raise
    except (ValueError, OSError) as err:
        raise RunError(one_line(err)) from None
    return Preflight(raw_ds, hf_config, task, label_words, precision, world, resume_from,
                     fork=t.resume not in ("auto", "none"))


__all__ = ["Preflight", "RunError", "check_positions", "position_limit", "preflight"]
