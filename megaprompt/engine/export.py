"""Gather the trainable tensors (fp32 master copies under ZeRO) and write the prompt export on rank 0."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megaprompt.engine.distributed import barrier, is_rank0
from megaprompt.assemble import save_model_export
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
    """Write the export (layout v2, ``megaprompt.export``) on rank 0. Collective: every rank must call it."""
    tensors = gathered_trainable(run.engine, run.model)
    t, model = run.cfg.train, run.model
    if is_rank0():
        tasks = {}
        for task, entry in zip(run.tasks, run.pre.entries):
            # the verbalizer's MLM head is not exported (frozen, it comes with the backbone): predict rebuilds it
            words = resolve_label_words(t.label_words, task.label_names) if t.head_type == "verbalizer" else None
            tasks[task.name] = {"label_names": list(task.label_names), "label_words": words,
                                "max_seq_len": entry.max_seq_len,
                                # SQuAD v2: the no-answer threshold tuned on dev travels with the prompt
                                "null_threshold": getattr(task, "null_threshold", None)}
        save_model_export(model, out_dir, tensors, run.fingerprint, tasks,
                          # enough to rebuild the model: tiny random backbones are a function of the seed
                          extra={"backbone_arg": run.cfg.backbone, "seed": t.seed,
                                 "max_seq_len": run.pre.entries[0].max_seq_len, **(extra or {})})
    barrier()
