"""P-Tuning v2 deep prompts: trainable prefix keys/values for every chosen layer (Liu et al., ACL 2022).

Parameters (P = prompt_len, Lp = number of prompted layers, K = kv heads, d = head_dim):
  reparam=none: ``table``  (P, Lp*2*K*d)                      - a direct table
  reparam=mlp : ``embedding`` (P, hidden) -> Linear(hidden, mlp_hidden) -> Tanh -> Linear(mlp_hidden, Lp*2*K*d)
``forward()`` returns the prefix of one example, ``(Lp, 2, K, P, d)`` for the layers in ``self.layers``
(call the module, not ``flat``: under ZeRO-3 the call gathers the parameters). The prompt bank
(``prompts.bank``) turns the prompts of a batch's tasks into per-row, per-layer prefixes and applies this
module's dropout per example. Prefixes are stored per *kv* head, so GQA backbones pay K/H of the MHA cost.
``table_tensor()`` materialises the MLP reparameterization into the table an export stores.
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
        self.cfg = cfg                 # what an export records of this prompt
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

    def table_tensor(self) -> torch.Tensor:
        """The materialised table ``(P, Lp*2*K*d)`` (the MLP applied once): what an export stores."""
        return self.flat().detach()

    def forward(self) -> torch.Tensor:
        """(Lp, 2, K, P, d): layer j of ``self.layers``, key (0) or value (1), kv head, slot, head_dim."""
        p, k, d = self.prompt_len, self.kv_heads, self.head_dim
        return self.flat().view(p, len(self.layers), 2, k, d).permute(1, 2, 3, 0, 4)


def table_from_mlp(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The table an MLP-reparameterized prefix computes, from its tensors (``embedding``, ``mlp.0.*``,
    ``mlp.2.*``): Linear -> Tanh -> Linear, as ``DeepPrefix.flat``."""
    h = torch.tanh(tensors["embedding"] @ tensors["mlp.0.weight"].T + tensors["mlp.0.bias"])
    return h @ tensors["mlp.2.weight"].T + tensors["mlp.2.bias"]
