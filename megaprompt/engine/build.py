"""Build a run: validate cheap things first, then data, then the ZeRO-partitioned model and its engine.

Order matters for ZeRO-3: the ``HfDeepSpeedConfig`` must be alive *before* ``from_pretrained`` /
``from_config`` so transformers constructs every layer inside ``deepspeed.zero.Init`` and no rank ever
holds the full backbone. The prompt and head are small and built afterwards on every rank (same seed, so
identical), cast to the backbone's dtype (else bf16 runs fail with "mixed dtype"), and converted to ZeRO-3
parameters by ``deepspeed.initialize``. Only trainable parameters reach the optimizer, so frozen weights
get no fp32 master copy and no Adam state.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from megaprompt.accounting import ParamCount, count_parameters
from megaprompt.backbones.load import TINY_CONFIGS, load_backbone, load_config, load_tokenizer, tiny_checkpoint
from megaprompt.config import RunConfig
from megaprompt.engine import checkpoint as ckpt
from megaprompt.engine import ds_config as dsc
from megaprompt.engine.distributed import barrier, init_distributed, is_rank0, log, setup_logging
from megaprompt.heads.verbalizer import (MLM_MODEL_TYPES, VerbalizerHead, add_mask_token, has_mlm_head,
                                         resolve_label_words)
from megaprompt.export import atomic_write_text
from megaprompt.model import PromptedModel, build_model
from megaprompt.tasks import EncodedSplit, get_task
from megaprompt.tasks.encoding import cached_encode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Keys that define what a run computes: a different value in an existing output_dir is another run.
IDENTITY_KEYS = ("backbone", "method", "prompt_len", "reparam", "mlp_hidden", "prompt_layers", "task", "data_dir",
                 "max_seq_len", "lr", "batch_size", "grad_accum", "seed", "precision", "weight_decay", "init",
                 "head_type", "label_words")


class RunError(ValueError):
    """A user mistake detected before training; the message is one line."""


@dataclass
class Run:
    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    task: Any
    tokenizer: Any
    train: EncodedSplit
    dev: EncodedSplit
    model: PromptedModel
    engine: Any
    ds_config: dict[str, Any]
    precision: str
    total_steps: int
    counts: ParamCount
    out: Path
    keep_alive: list[Any] = field(default_factory=list)   # HfDeepSpeedConfig must outlive model building


def position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in ("roberta", "xlm-roberta"):
        limit -= config.pad_token_id + 1     # RoBERTa positions start after the padding index
    return limit


def check_output_dir(cfg: RunConfig, out: Path) -> None:
    """Refuse to mix two runs' checkpoints in one directory unless --resume says which to use."""
    saved = out / "config.yaml"
    if not (out / "checkpoints").is_dir() or not saved.is_file() or cfg.train.resume != "auto":
        return
    import yaml
    old = yaml.safe_load(saved.read_text()) or {}
    new = cfg.flat()
    for key in IDENTITY_KEYS:
        if key in old and old[key] != new[key]:
            raise RunError(f"{out} holds checkpoints of another run ({key}: {old[key]!r} there, {new[key]!r} now); "
                           f"use another --output_dir, --resume none to start over, or --resume PATH")


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


def check_resume(cfg: RunConfig, out: Path, world: int) -> None:
    """The checkpoint ``--resume`` points at must be complete and written by as many ranks as we have
    (ZeRO partitions and the data order both depend on the world size)."""
    path = ckpt.find_resume(out / "checkpoints", cfg.train.resume)
    if path is None:
        return
    saved = json.loads((path / "state.json").read_text()).get("world")
    if saved is not None and saved != world:
        raise RunError(f"checkpoint {path} was written by {saved} ranks, this job has {world}: relaunch with "
                       f"{saved} ranks, or --resume none to start over")


def set_aside_previous_run(out: Path) -> None:
    """``--resume none`` in a directory with an earlier run: move its outputs aside rather than deleting them
    or mixing them with the new run's (checkpoint rotation would otherwise keep the old, higher steps)."""
    old = [out / n for n in ("checkpoints", "export", "metrics.json", "tb") if (out / n).exists()]
    if not old:
        return
    dest = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in old:
        p.rename(dest / p.name)
    log.warning("--resume none: moved the earlier run's %s to %s", ", ".join(p.name for p in old), dest)


def build(cfg: RunConfig) -> Run:
    rank, world, device = init_distributed()
    out = Path(cfg.train.output_dir)
    if is_rank0():
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    setup_logging(str(out / "train.log"))
    t, d, p = cfg.train, cfg.data, cfg.prompt

    # ---- cheap validation first: every rank would fail the same way, before any heavy work --------------
    try:
        raw_ds = dsc.read_ds_config(t.ds_config)
        hf_config = load_config(cfg.backbone)
        limit = position_limit(hf_config)
        need = d.max_seq_len + (p.prompt_len if p.method == "lester" else 0)
        if limit and need > limit:
            extra = f" + prompt_len {p.prompt_len} (lester prompts take positions)" if p.method == "lester" else ""
            raise RunError(f"max_seq_len {d.max_seq_len}{extra} = {need} exceeds {cfg.backbone}'s "
                           f"{limit} positions")
        task = get_task(d.task, data_dir=d.data_dir)
        verbalizer = t.head_type == "verbalizer"
        label_words = check_verbalizer(cfg, task, hf_config) if verbalizer else []
        check_output_dir(cfg, out)
        check_resume(cfg, out, world)
    except (ValueError, OSError) as err:
        raise RunError(str(err)) from None

    from deepspeed.accelerator import get_accelerator
    on_cpu = device.type == "cpu"
    bf16_ok = not on_cpu and get_accelerator().is_bf16_supported()
    precision = dsc.resolve_precision(t.precision, raw_ds, not on_cpu, bf16_ok, t.ds_config)

    # ---- data ---------------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.backbone)
    # rank 0 tokenizes first and fills the feature cache; the others then read it instead of re-tokenizing
    splits: dict[str, EncodedSplit] = {}
    limits = {"train": d.max_train_examples, "dev": d.max_eval_examples}
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            for split in ("train", "dev"):
                try:
                    examples = task.load(d.data_dir, split)
                except (ValueError, OSError) as err:
                    raise RunError(str(err)) from None
                if limits[split]:   # cut examples, not features: QA windows of one question stay together
                    examples = examples[:limits[split]]
                splits[split] = cached_encode(task, split, examples, tokenizer, d.max_seq_len)
        barrier()
    train, dev = splits["train"], splits["dev"]
    if verbalizer:   # after the feature cache, which stays head-agnostic: "<text> [SEP] <pair> [MASK] [SEP]"
        train, dev = (replace(s, features=add_mask_token(s.features, tokenizer, d.max_seq_len)) for s in (train, dev))
    global_batch = t.batch_size * t.grad_accum * world
    steps_per_epoch = len(train) // global_batch
    if steps_per_epoch == 0:
        raise RunError(f"{len(train)} training features cannot fill one global batch of {global_batch} "
                       f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x {world} ranks)")
    total_steps = t.max_steps or max(1, int(math.ceil(t.epochs * steps_per_epoch)))
    try:
        ds_config = dsc.fill_ds_config(raw_ds, cfg, world, total_steps, precision, on_cpu, t.ds_config)
    except ValueError as err:
        raise RunError(str(err)) from None
    if is_rank0():
        if t.resume == "none":
            set_aside_previous_run(out)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())

    # ---- model: partitioned at construction under ZeRO-3 ----------------------------------------------------
    keep_alive: list[Any] = []
    if cfg.backbone in TINY_CONFIGS:   # write the random-init checkpoint before ZeRO-3 hooks are armed
        tiny_checkpoint(cfg.backbone, t.seed)
    barrier()
    if dsc.zero_stage(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig
        keep_alive.append(HfDeepSpeedConfig(ds_config))
    dtype = DTYPES[precision]
    backbone, _, *mlm = load_backbone(cfg.backbone, dtype=dtype, seed=t.seed, with_mlm_head=verbalizer,
                                      hidden_dropout=None if t.hidden_dropout < 0 else t.hidden_dropout)
    torch.manual_seed(t.seed)   # identical prompt/head init on every rank
    labels = task.label_names
    head = VerbalizerHead.for_words(mlm[0], tokenizer, label_words) if verbalizer else None
    model = build_model(backbone, p, task.head, max(len(labels), 1), name=cfg.backbone,
                        head_dropout=t.head_dropout, head=head)
    for module in (model.prompt, model.head):
        if module is not None:
            module.to(dtype)
    if t.gradient_checkpointing:
        model.enable_gradient_checkpointing(every_n_layers=t.checkpoint_every)
    counts = count_parameters(model)
    zero = ds_config.get("zero_optimization", {})
    if zero.get("reduce_bucket_size") == "auto":
        # DeepSpeed allocates the reduce bucket at full size (default 5e8 elements, 1 GB in bf16) however few
        # parameters train; P-Tuning v2 needs a bucket about the size of its prompt + head.
        zero["reduce_bucket_size"] = int(min(5e8, max(counts.trainable, 1e6)))

    import deepspeed
    trainable = [q for q in model.parameters() if q.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    log.info("backbone %s (%s, %d layers) | method %s | trainable %s / %s params (%.4f%%) | %d ranks, %s, %s",
             cfg.backbone, model.spec.model_type, model.spec.num_layers, p.method, f"{counts.trainable:,}",
             f"{counts.total:,}", 100 * counts.ratio, world, device.type, precision)
    return Run(cfg, rank, world, device, task, tokenizer, train, dev, model, engine, ds_config, precision,
               total_steps, counts, out, keep_alive)


__all__ = ["Run", "RunError", "build"]
