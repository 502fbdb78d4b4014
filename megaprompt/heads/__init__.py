"""Task heads. Each is an ``nn.Module``: ``forward(hidden (B, L, H), attention_mask (B, L), labels=None,
**extra) -> {"loss", "logits"}``. ``build_head`` picks one by the task's head kind."""
from __future__ import annotations

import importlib

import torch.nn as nn

from megaprompt.heads.classification import POOLINGS, ClassificationHead, pool

# kind -> (module, class); other heads are imported lazily so a missing optional one never breaks cls/reg.
_HEADS = {
    "cls": ("megaprompt.heads.classification", "ClassificationHead"),
    "reg": ("megaprompt.heads.classification", "ClassificationHead"),
    "mc": ("megaprompt.heads.multiple_choice", "MultipleChoiceHead"),
    "tag": ("megaprompt.heads.token", "TokenClassificationHead"),
    "span": ("megaprompt.heads.span", "SpanHead"),
}
HEAD_KINDS = tuple(_HEADS)


def build_head(kind: str, hidden_size: int, num_labels: int, pooling: str = "first",
               dropout: float = 0.1) -> nn.Module:
    if kind not in _HEADS:
        raise ValueError(f"head kind {kind!r}: expected one of {', '.join(HEAD_KINDS)}")
    module, cls = _HEADS[kind]
    head_cls = getattr(importlib.import_module(module), cls)
    if kind in ("cls", "reg"):
        return head_cls(hidden_size, num_labels, pooling=pooling, dropout=dropout, regression=kind == "reg")
    if kind == "mc":
        return head_cls(hidden_size, pooling=pooling, dropout=dropout)
    if kind == "span":
        return head_cls(hidden_size, dropout=dropout)
    return head_cls(hidden_size, num_labels, dropout=dropout)


__all__ = ["HEAD_KINDS", "POOLINGS", "ClassificationHead", "build_head", "pool"]
