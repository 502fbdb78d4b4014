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
from megaprompt.backbones import SUPPORTED_MODEL_TYPES, get_adapter
from megaprompt.heads.verbalizer import resolve_label_words
from megaprompt.prompts import parse_layers
from megaprompt.prompts.config import PROMPT_KINDS
from megaprompt.rundir import check_identity
from megaprompt.tasks import get_task


class RunError(UserError):
    """A user mistake detected before (or while) building a run; the message is one line."""


@dataclass
class Preflight:
    """What the checks learned, so building does not redo them."""

    raw_ds: dict[str, Any]
    hf_config: Any
    tasks: list[Any]              # the task objects, in the order of ``entries``
    entries: list[Any]            # config.TaskEntry: name, data_dir, max_seq_len, max_train_examples
    label_words: list[str]
    precision: str
    world: int
    resume_from: Path | None      # the checkpoint to load (``--resume auto`` resolved), None for a fresh start
    fork: bool                    # ``--resume PATH``: a new trajectory from an explicit checkpoint

    @property
    def task(self) -> Any:
        return self.tasks[0]


def position_limit(config: Any) -> int | None:
    return get_adapter(config.model_type).position_limit(config)


def check_positions(config: Any, backbone: str, max_seq_len: int, method: str, prompt_len: int) -> None:
    limit = position_limit(config)
    takes = PROMPT_KINDS.get(method) == "input"
    need = max_seq_len + (prompt_len if takes else 0)
    if limit and need > limit:
        extra = f" + prompt_len {prompt_len} ({method} prompts take positions)" if takes else ""
        raise RunError(f"max_seq_len {max_seq_len}{extra} = {need} exceeds {backbone}'s {limit} positions")


def check_verbalizer(cfg: RunConfig, task: Any, hf_config: Any) -> list[str]:
    """The verbalizer's preconditions, as one-line errors; returns the label words, one per label."""
    if task.head != "cls":
        raise RunError(f"--head_type verbalizer needs a classification task; {task.name} has a {task.head!r} head")
    if not get_adapter(hf_config.model_type).has_mlm_head(hf_config):
        mlm = [t for t in SUPPORTED_MODEL_TYPES if t in get_adapter(t).mlm_model_types]
        raise RunError(f"--head_type verbalizer needs an encoder with an MLM head ({', '.join(mlm)}); "
                       f"{cfg.backbone} is {hf_config.model_type}")
    if cfg.prompt.method == "head":
        raise RunError("--head_type verbalizer with --method head has nothing to train (the MLM head stays "
                       "frozen); use pt2, lester or ft")
    return resolve_label_words(cfg.train.label_words, task.label_names)


def check_init_from(cfg: RunConfig, hf_config: Any) -> None:
    """``--init_from``: a readable export of this method whose backbone facts match (weights: at build time)."""
    from megaprompt.backbones import spec_from_config
    from megaprompt.export import check_backbone, read_export

    data = read_export(cfg.train.init_from)
    adapter = get_adapter(hf_config.model_type)
    check_backbone(data.meta, spec_from_config(hf_config, adapter.is_decoder), where=f"--init_from {cfg.train.init_from}")
    if data.meta["method"] != cfg.prompt.method:
        raise RunError(f"--init_from {cfg.train.init_from}: method {data.meta['method']} in the export, "
                       f"{cfg.prompt.method} in this run")


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
        entries = d.entries()
        if t.head_type == "verbalizer" and len(entries) > 1:
            raise RunError(f"--head_type verbalizer takes one task; got {d.task}")
        own_len = t.task_prompt_len or p.prompt_len if t.prompt_sharing == "shared+task" else 0
        for e in entries:
            check_positions(hf_config, cfg.backbone, e.max_seq_len, p.method, p.prompt_len + own_len)
        if p.kind == "prefix":
            parse_layers(p.prompt_layers, hf_config.num_hidden_layers)
        tasks = []
        for e in entries:
            task = get_task(e.name, data_dir=e.data_dir)
            if e.data_dir is not None:
                for split in ("train", "dev"):
                    task.require_files(e.data_dir, split)  # presence only: reading comes later, on rank 0 first
            tasks.append(task)
        label_words = check_verbalizer(cfg, tasks[0], hf_config) if t.head_type == "verbalizer" else []
        if t.init_from:
            check_init_from(cfg, hf_config)
        check_writable(out, "--output_dir")
        if t.resume == "auto":
            defaults = {k: v for k, (_, v) in FIELDS.items()}
            check_identity(out, cfg.flat(), identity_keys(), defaults)
        resume_from = check_resume(cfg, out, raw_ds, world)
    except RunError:
        raise
    except (ValueError, OSError) as err:
        raise RunError(one_line(err)) from None
    return Preflight(raw_ds, hf_config, tasks, entries, label_words, precision, world, resume_from,
                     fork=t.resume not in ("auto", "none"))


__all__ = ["Preflight", "RunError", "check_positions", "position_limit", "preflight"]
