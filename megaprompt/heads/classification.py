"""The paper's head: a randomly initialised linear layer on a pooled representation (P-Tuning v2 Sec. 3.3).

P-Tuning v2 drops verbalizers for a plain linear head. Pooling is the first token for encoders ([CLS])
and the last real (non-pad) token for decoders, whose causal attention only lets the end see everything.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

POOLINGS = ("first", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, H) -> (B, H). ``last`` finds the last position whose mask is 1 (works for left or right pad)."""
    if how == "first":
        return hidden[:, 0]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (attention_mask.to(positions.dtype) * (positions + 1)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ClassificationHead(nn.Module):
    """Pooled classification (``num_labels`` > 1, cross-entropy) or regression (``num_labels`` == 1, MSE)."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "first", dropout: float = 0.1,
                 regression: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: expected one of {POOLINGS}")
        self.pooling, self.regression = pooling, regression
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1 if regression else num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **extra: object) -> dict[str, torch.Tensor | None]:
        logits = self.out(self.dropout(pool(hidden, attention_mask, self.pooling)))
        loss = None
        if labels is not None:
            if self.regression:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "logits": logits}
