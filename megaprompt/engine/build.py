"""Build a run: cheap checks first (``preflight``), then the output directory, data, and the model and engine.

Order matters:

* ``preflight`` runs on every rank before any process group exists, so a user's mistake stops every rank
  in seconds with one line, before DeepSpeed builds an op or anything is written.
* The process group comes next (torch only), so rank 0 can take the output directory's lock and set earlier
  outputs aside while the others wait for its verdict - all ranks then succeed or fail together.
* ZeRO-3: the ``HfDeepSpeedConfig`` must be alive *before* ``from_pretrained`` / ``from_config`` so
  transformers constructs every layer inside ``deepspeed.zero.Init`` and no rank ever holds the full
  backbone. The prompt and head are small and built afterwards on every rank (same seed, so identical), cast
  to the backbone's dtype (else bf16 runs fail with "mixed dtype"), and converted to ZeRO-3 parameters by
  ``deepspeed.initialize``. Only trainable parameters reach the optimizer, so frozen weights get no fp32
  master copy and no Adam state.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from megaprompt.accounting import ParamCount, count_parameters
from megaprompt.backbones.load import TINY_CONFIGS, load_backbone, load_tokenizer, tiny_checkpoint
from megaprompt.cli import one_line
from megaprompt.config import RunConfig
from megaprompt.engine import checkpoint as ckpt
from megaprompt.engine import ds_config as dsc
from megaprompt.engine.distributed import (any_true, barrier, init_deepspeed_comm, init_process_group, is_rank0, log,
                                           rank0_first, setup_logging)
from megaprompt.engine.preflight import Preflight, RunError, preflight
from megaprompt.heads.verbalizer import VerbalizerHead, add_mask_token
from megaprompt.model import PromptedModel, build_model
from megaprompt.rundir import RunDirError, RunDirLock, earlier_outputs, set_aside, write_config
from megaprompt.tasks import EncodedSplit, load_split

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    pre: Preflight
    lock: RunDirLock | None
    keep_alive: list[Any] = field(default_factory=list)   # HfDeepSpeedConfig must outlive model building


def fork_leftovers(out: Path, fork: Path) -> list[Path]:
    """What a fork (``--resume PATH``) must set aside: outputs of the abandoned future of this directory.

    A fork from this directory's own history keeps the checkpoints up to the fork point (its ancestors) and an
    export written by then; later checkpoints, the HEAD pointer, metrics, TensorBoard and a later export go. A
    fork from elsewhere shares no history with this directory: everything goes, as with ``--resume none``.
    """
    ckpt_dir = out / "checkpoints"
    if fork.resolve().parent != ckpt_dir.resolve():
        return earlier_outputs(out)
    step = ckpt.read_state(fork)["step"]
    later = [p for p in ckpt_dir.iterdir()
             if (m := ckpt.TAG_RE.match(p.name)) and int(m.group(1)) > step]
    leftovers = later + [ckpt_dir / ckpt.HEAD, out / "metrics.json", out / "tb"]
    meta = out / "export" / "prompt.json"
    try:
        export_step = json.loads(meta.read_text(encoding="utf-8")).get("step") if meta.is_file() else None
    except (ValueError, OSError):
        export_step = None
    if (out / "export").exists() and not (isinstance(export_step, int) and export_step <= step):
        leftovers.append(out / "export")
    return leftovers


def claim_output_dir(cfg: RunConfig, pre: Preflight, out: Path) -> tuple[RunDirLock | None, list[str]]:
    """Rank 0 locks ``out``, sets earlier outputs aside as ``--resume`` asks and writes ``config.yaml``; every
    rank learns the verdict (collective), so all fail together. Returns the lock and lines to log."""
    lock, notes, error = None, [], None
    if is_rank0():
        try:
            lock = RunDirLock(out).acquire()
            if lock.stale:
                notes.append(f"took over the stale lock of a run that is gone (host {lock.stale.get('host')}, "
                             f"pid {lock.stale.get('pid')})")
            moved = None
            if cfg.train.resume == "none":
                moved = set_aside(out, earlier_outputs(out))
            elif pre.fork:
                leftovers = fork_leftovers(out, pre.resume_from)
                saved = out / "config.yaml"
                if saved.is_file() and saved.read_text(encoding="utf-8") != cfg.to_yaml():
                    leftovers.append(saved)
                moved = set_aside(out, leftovers)
            if moved is not None:
                notes.append(f"--resume {cfg.train.resume}: moved the earlier run's "
                             f"{', '.join(sorted(p.name for p in moved.iterdir()))} to {moved}")
            write_config(out, cfg.to_yaml())
        except (RunDirError, ckpt.CheckpointError, OSError) as err:
            error = one_line(err)
            if lock is not None:
                lock.release()
    if any_true(error is not None):
        raise RunError(error or "rank 0 could not claim the output directory")
    return lock, notes


def build(cfg: RunConfig) -> Run:
    pre = preflight(cfg)                                   # every rank: cheap checks, nothing written yet
    rank, world, device = init_process_group()             # torch only: no DeepSpeed op yet
    out = Path(cfg.train.output_dir)
    lock, notes = claim_output_dir(cfg, pre, out)
    setup_logging(str(out / "train.log"))
    for note in notes:
        log.warning("%s", note)
    t, d, p = cfg.train, cfg.data, cfg.prompt
    task, raw_ds, precision, label_words = pre.task, pre.raw_ds, pre.precision, pre.label_words
    verbalizer = t.head_type == "verbalizer"
    on_cpu = device.type == "cpu"

    # ---- data: rank 0 reads and tokenizes first (filling the feature cache), then the others read the cache --
    t0 = time.time()
    log.info("reading and tokenizing %s (train, dev) with %s's tokenizer", task.name, cfg.backbone)
    tokenizer = load_tokenizer(cfg.backbone)
    limits = {"train": d.max_train_examples, "dev": d.max_eval_examples}

    # the verbalizer's "<text> [SEP] <pair> [MASK] [SEP]" is a transform of the encoded features (cached apart)
    transform = partial(add_mask_token, tokenizer=tokenizer, max_seq_len=d.max_seq_len) if verbalizer else None

    def load_splits() -> dict[str, EncodedSplit]:
        try:   # limits cut examples, not features: QA windows of one question stay together
            return {split: load_split(task, d.data_dir, split, tokenizer, d.max_seq_len, limit=limits[split],
                                      transform=transform) for split in ("train", "dev")}
        except (ValueError, OSError) as err:
            raise RunError(one_line(err)) from None

    splits = rank0_first(load_splits)    # rank 0 builds the Arrow cache; the others then memory-map it
    train, dev = splits["train"], splits["dev"]
    log.info("data: %d train / %d dev features of %s (%.1f s)", len(train), len(dev), task.name, time.time() - t0)
    global_batch = t.batch_size * t.grad_accum * world
    steps_per_epoch = len(train) // global_batch
    if steps_per_epoch == 0:
        raise RunError(f"{len(train)} training features cannot fill one global batch of {global_batch} "
                       f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x {world} ranks)")
    total_steps = t.max_steps or max(1, int(math.ceil(t.epochs * steps_per_epoch)))
    try:
        ds_config = dsc.fill_ds_config(raw_ds, cfg, world, total_steps, precision, on_cpu, t.ds_config)
    except ValueError as err:
        raise RunError(one_line(err)) from None

    # ---- model: partitioned at construction under ZeRO-3 ----------------------------------------------------
    t0 = time.time()
    init_deepspeed_comm()
    log.info("loading backbone %s (%s) and building the DeepSpeed engine (ZeRO-%d, %s)", cfg.backbone,
             pre.hf_config.model_type, dsc.zero_stage(ds_config), precision)
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
    log.info("backbone %s (%s, %d layers) | method %s | trainable %s / %s params (%.4f%%) | %d ranks, %s, %s "
             "(model and engine %.1f s)", cfg.backbone, model.spec.model_type, model.spec.num_layers, p.method,
             f"{counts.trainable:,}", f"{counts.total:,}", 100 * counts.ratio, world, device.type, precision,
             time.time() - t0)
    return Run(cfg, rank, world, device, task, tokenizer, train, dev, model, engine, ds_config, precision,
               total_steps, counts, out, pre, lock, keep_alive)


__all__ = ["Run", "RunError", "build"]
