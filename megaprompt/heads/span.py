"""Span extraction head for extractive QA (Devlin et al. 2019 Sec. 4.2; P-Tuning v2 on SQuAD): a randomly
initialised linear layer gives each token a start and an end logit. Logits (B, L, 2): [..., 0] start,
[..., 1] end. Loss: mean of the start and end cross-entropies; position 0 ([CLS]) means "no answer in this
window". Padding positions are masked out of the softmax.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpanHead(nn.Module):
    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                **extra: object) -> dict[str, torch.Tensor | None]:
        logits = self.out(self.dropout(hidden))                     # (B, L, 2)
        loss = None
        if start_positions is not None and end_positions is not None:
            length = logits.shape[1]
            masked = logits.float().masked_fill((attention_mask == 0).unsqueeze(-1), -1e4)
            start = start_positions.view(-1).long()
            end = end_positions.view(-1).long()
            if bool(((start < 0) | (start >= length) | (end < 0) | (end >= length)).any()):
                raise ValueError(f"span positions outside the sequence length {length}")
            loss = (F.cross_entropy(masked[..., 0], start) + F.cross_entropy(masked[..., 1], end)) / 2
        return {"loss": loss, "logits": logits}
