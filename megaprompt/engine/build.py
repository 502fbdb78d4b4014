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
from megaprompt.assemble import assemble
from megaprompt.backbones import fingerprint
from megaprompt.backbones.load import TINY_CONFIGS, load_backbone, load_tokenizer, tiny_checkpoint
from megaprompt.cli import one_line
from megaprompt.config import RunConfig
from megaprompt.engine import checkpoint as ckpt
from megaprompt.engine import ds_config as dsc
from megaprompt.engine.distributed import (any_true, barrier, init_deepspeed_comm, init_process_group, is_rank0, log,
                                           rank0_first, setup_logging)
from megaprompt.engine.preflight import Preflight, RunError, preflight
from megaprompt.heads.verbalizer import VerbalizerHead, add_mask_token
from megaprompt.model import PromptedModel, TaskSlot
from megaprompt.rundir import RunDirError, RunDirLock, earlier_outputs, set_aside, write_config
from megaprompt.tasks import EncodedSplit, load_split

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Run:
    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    tasks: list[Any]                 # task objects, in config order (task index = position)
    tokenizer: Any
    trains: list[EncodedSplit]       # per task
    devs: list[EncodedSplit]         # per task
    model: PromptedModel
    engine: Any
    ds_config: dict[str, Any]
    precision: str
    total_steps: int
    counts: ParamCount
    out: Path
    pre: Preflight
    lock: RunDirLock | None
    fingerprint: str = ""                                  # of the backbone's weights, recorded in exports
    keep_alive: list[Any] = field(default_factory=list)   # HfDeepSpeedConfig must outlive model building

    # single-task views (the T=1 case)
    @property
    def task(self) -> Any:
        return self.tasks[0]

    @property
    def train(self) -> EncodedSplit:
        return self.trains[0]

    @property
    def dev(self) -> EncodedSplit:
        return self.devs[0]


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
    meta = out / "export" / "export.json"
    if not meta.is_file():
        meta = out / "export" / "prompt.json"       # a version-1 export
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
    tasks, raw_ds, precision, label_words = pre.tasks, pre.raw_ds, pre.precision, pre.label_words
    verbalizer = t.head_type == "verbalizer"
    on_cpu = device.type == "cpu"

    # ---- data: rank 0 reads and tokenizes first (filling the feature cache), then the others read the cache --
    t0 = time.time()
    names = ", ".join(task.name for task in tasks)
    log.info("reading and tokenizing %s (train, dev) with %s's tokenizer", names, cfg.backbone)
    tokenizer = load_tokenizer(cfg.backbone)

    def load_splits() -> list[dict[str, EncodedSplit]]:
        out = []
        for task, entry in zip(tasks, pre.entries):
            # the verbalizer's "<text> [SEP] <pair> [MASK] [SEP]": a transform of the features (cached apart)
            transform = partial(add_mask_token, tokenizer=tokenizer, max_seq_len=entry.max_seq_len) \
                if verbalizer else None
            limits = {"train": entry.max_train_examples, "dev": d.max_eval_examples}
            try:   # limits cut examples, not features: QA windows of one question stay together
                out.append({split: load_split(task, entry.data_dir, split, tokenizer, entry.max_seq_len,
                                              limit=limits[split], transform=transform)
                            for split in ("train", "dev")})
            except (ValueError, OSError) as err:
                raise RunError(one_line(err)) from None
        return out

    loaded = rank0_first(load_splits)    # rank 0 builds the Arrow caches; the others then memory-map them
    trains, devs = [s["train"] for s in loaded], [s["dev"] for s in loaded]
    log.info("data: %s train / %s dev features of %s (%.1f s)", "+".join(str(len(x)) for x in trains),
             "+".join(str(len(x)) for x in devs), names, time.time() - t0)
    global_batch = t.batch_size * t.grad_accum * world
    small = [(task.name, len(x)) for task, x in zip(tasks, trains) if len(x) < global_batch]
    if small:
        raise RunError(f"{small[0][0]}: {small[0][1]} training features cannot fill one global batch of "
                       f"{global_batch} (batch_size {t.batch_size} x grad_accum {t.grad_accum} x {world} ranks)")
    steps_per_epoch = sum(len(x) for x in trains) // global_batch
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
    zero3 = dsc.zero_stage(ds_config) == 3
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig
        keep_alive.append(HfDeepSpeedConfig(ds_config))
    dtype = DTYPES[precision]
    backbone, _, *mlm = load_backbone(cfg.backbone, dtype=dtype, seed=t.seed, with_mlm_head=verbalizer,
                                      hidden_dropout=None if t.hidden_dropout < 0 else t.hidden_dropout)
    backbone_fp = fingerprint(backbone)      # collective under ZeRO-3 (gathers two tensors)
    torch.manual_seed(t.seed)   # identical prompt/head init on every rank
    slots = [TaskSlot(task.name, task.head, max(len(task.label_names), 1)) for task in tasks]
    heads = {tasks[0].name: VerbalizerHead.for_words(mlm[0], tokenizer, label_words)} if verbalizer else None
    try:
        model = assemble(backbone, p, slots, name=cfg.backbone, head_dropout=t.head_dropout, heads=heads,
                         sharing=t.prompt_sharing, task_prompt_len=t.task_prompt_len, dtype=dtype,
                         init_from=t.init_from or None)
    except ValueError as err:
        raise RunError(one_line(err)) from None
    if t.init_from:
        log.info("initialised from %s", t.init_from)
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
    if zero3 and len(model.tasks) > 1:
        # idle tasks' parameters are used by PromptedModel.forward itself (exact-zero gradients), outside the
        # submodules that own them: ZeRO-3 gathers them only if registered as external parameters
        for q in trainable:
            deepspeed.zero.register_external_parameter(model, q)
    log.info("backbone %s (%s, %d layers) | method %s | trainable %s / %s params (%.4f%%) | %d ranks, %s, %s "
             "(model and engine %.1f s)", cfg.backbone, model.spec.model_type, model.spec.num_layers, p.method,
             f"{counts.trainable:,}", f"{counts.total:,}", 100 * counts.ratio, world, device.type, precision,
             time.time() - t0)
    return Run(cfg, rank, world, device, list(tasks), tokenizer, trains, devs, model, engine, ds_config, precision,
               total_steps, counts, out, pre, lock, backbone_fp, keep_alive)


__all__ = ["Run", "RunError", "build"]
