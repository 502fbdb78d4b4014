"""Multiple-choice head (P-Tuning v2's COPA setting; Devlin et al. 2019 Sec. 4.4 SWAG): every choice is
its own sequence, pooled and scored by one randomly initialised linear unit; softmax over the choices.

The model flattens (B, C, L) inputs to (B*C, L) and passes ``num_choices=C``; logits come back as (B, C).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from megaprompt.heads.classification import POOLINGS, pool


class MultipleChoiceHead(nn.Module):
    def __init__(self, hidden_size: int, pooling: str = "first", dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: expected one of {POOLINGS}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                num_choices: int | None = None, **extra: object) -> dict[str, torch.Tensor | None]:
        if num_choices is None:
            raise ValueError("MultipleChoiceHead needs num_choices (inputs shaped (B, C, L) flattened to (B*C, L))")
        if hidden.shape[0] % num_choices:
            raise ValueError(f"batch of {hidden.shape[0]} sequences is not a multiple of num_choices={num_choices}")
        scores = self.out(self.dropout(pool(hidden, attention_mask, self.pooling)))   # (B*C, 1)
        logits = scores.view(-1, num_choices)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": logits}
