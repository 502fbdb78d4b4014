"""Token classification head (NER / SRL; Devlin et al. 2019 Sec. 4.3, P-Tuning v2 sequence labelling):
a randomly initialised linear layer on every token. Only the first sub-word of each word carries a label;
all other positions (continuations, special tokens, padding) are -100 and ignored by the loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100


class TokenClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError("TokenClassificationHead needs num_labels >= 1")
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **extra: object) -> dict[str, torch.Tensor | None]:
        logits = self.out(self.dropout(hidden))                     # (B, L, num_labels)
        loss = None
        if labels is not None:
            labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
            if (labels != IGNORE_INDEX).any():
                loss = F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX)
            else:   # nothing labelled in this batch: a zero that still carries the graph
                loss = logits.sum() * 0.0
        return {"loss": loss, "logits": logits}
