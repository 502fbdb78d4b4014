"""Gather the trainable tensors (fp32 master copies under ZeRO) and write the prompt export on rank 0."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megaprompt.engine.distributed import barrier, is_rank0
from megaprompt.export import save_export
from megaprompt.heads.verbalizer import resolve_label_words


def gathered_trainable(engine: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 values of every trainable parameter. Collective: every rank must call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        full = safe_get_full_fp32_param(p)      # ZeRO 1/2/3: the optimizer's fp32 master, all-gathered
        if full is None:                         # no ZeRO optimizer mapping: the parameter itself is full
            full = p.detach()
        out[name] = full.detach().float().cpu().contiguous().clone()
    return out


def export_trainable(run: Any, out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    tensors = gathered_trainable(run.engine, run.model)
    t = run.cfg.train
    # the verbalizer's MLM head is not exported (frozen, it comes with the backbone): predict rebuilds it
    words = resolve_label_words(t.label_words, run.task.label_names) if t.head_type == "verbalizer" else None
    if is_rank0():
        save_export(out_dir, tensors, run.model.spec, run.cfg.prompt, run.task.head, list(run.task.label_names),
                    task=run.cfg.data.task,
                    # enough to rebuild the model: tiny random backbones are a function of the seed
                    extra={"backbone_arg": run.cfg.backbone, "seed": run.cfg.train.seed,
                           "max_seq_len": run.cfg.data.max_seq_len,
                           # SQuAD v2: the no-answer threshold tuned on dev travels with the prompt
                           "null_threshold": getattr(run.task, "null_threshold", None),
                           "head_type": t.head_type, "label_words": words, **(extra or {})})
    barrier()
