"""P-Tuning v2 deep prompts: trainable prefix keys/values for every chosen layer (Liu et al., ACL 2022).

Parameters (P = prompt_len, Lp = number of prompted layers, K = kv heads, d = head_dim):
  reparam=none: ``table``  (P, Lp*2*K*d)                      - a direct table
  reparam=mlp : ``embedding`` (P, hidden) -> Linear(hidden, mlp_hidden) -> Tanh -> Linear(mlp_hidden, Lp*2*K*d)
Forward returns, for every backbone layer, ``(key, value)`` of shape (B, K, P, d), or None for layers
outside ``prompt_layers``. Prefixes are stored per *kv* head, so GQA backbones pay K/H of the MHA cost.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from megaprompt.backbones.base import BackboneSpec
from megaprompt.prompts.config import PromptConfig, parse_layers


class DeepPrefix(nn.Module):
    kind = "prefix"

    def __init__(self, cfg: PromptConfig, spec: BackboneSpec) -> None:
        super().__init__()
        self.layers = parse_layers(cfg.prompt_layers, spec.num_layers)
        self.num_layers = spec.num_layers
        self.prompt_len = cfg.prompt_len
        self.kv_heads, self.head_dim = spec.num_kv_heads, spec.head_dim
        out = len(self.layers) * 2 * self.kv_heads * self.head_dim
        if cfg.reparam == "mlp":
            self.embedding = nn.Parameter(torch.empty(cfg.prompt_len, spec.hidden_size))
            self.mlp = nn.Sequential(nn.Linear(spec.hidden_size, cfg.mlp_hidden), nn.Tanh(),
                                     nn.Linear(cfg.mlp_hidden, out))
            init_target = self.embedding
        else:
            self.table = nn.Parameter(torch.empty(cfg.prompt_len, out))
            init_target = self.table
        with torch.no_grad():
            if cfg.init == "zero":
                init_target.zero_()
            else:
                init_target.normal_(0.0, cfg.init_std)
        self.dropout = nn.Dropout(cfg.prefix_dropout)

    def flat(self) -> torch.Tensor:
        """The prefix for one example, (P, Lp*2*K*d)."""
        return self.mlp(self.embedding) if hasattr(self, "mlp") else self.table

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        p, k, d = self.prompt_len, self.kv_heads, self.head_dim
        x = self.flat().view(p, len(self.layers), 2, k, d).permute(1, 2, 3, 0, 4)   # (Lp, 2, K, P, d)
        x = x.unsqueeze(2).expand(-1, -1, batch_size, -1, -1, -1)                      # (Lp, 2, B, K, P, d)
        if self.training and self.dropout.p > 0:
            # Per-example dropout (as the official code, which dropped out the (B, P, ...) past_key_values).
            x = self.dropout(x.contiguous())
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.num_layers
        for j, layer in enumerate(self.layers):
            out[layer] = (x[j, 0], x[j, 1])
        return out
