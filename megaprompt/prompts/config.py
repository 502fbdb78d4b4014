"""Prompt configuration shared by every method (P-Tuning v2 Sec. 3-4; Lester et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass

METHODS = ("pt2", "lester", "ft", "head")
REPARAMS = ("none", "mlp")
INITS = ("normal", "zero")


@dataclass
class PromptConfig:
    """Which parameters a run trains, and the shape of its prompt."""

    method: str = "pt2"
    """pt2: deep prefix in every chosen layer; lester: input-embedding prompt; ft: full fine-tuning; head:
    frozen backbone, head only (linear probe)."""
    prompt_len: int = 16
    """Prefix/prompt length P. The paper uses ~8-32 for classification and 100+ for hard labeling."""
    reparam: str = "none"
    """none: a direct table (P, layers*2*kv_heads*head_dim); mlp: Embedding(P, hidden)->Linear->Tanh->Linear."""
    mlp_hidden: int = 512
    """Hidden width of the MLP reparameterization (official P-tuning-v2 code: prefix_hidden_size=512)."""
    prompt_layers: str = "all"
    """Layers that get a prefix: all, last:N, first:N, or a comma list like 0,3,5 (the depth ablation)."""
    prefix_dropout: float = 0.1
    """Dropout on prefix keys/values (the official code applies hidden_dropout_prob there)."""
    init: str = "normal"
    """normal (std=init_std) or zero."""
    init_std: float = 1.0
    """Std of the normal init; 1.0 matches nn.Embedding's default used by the official code."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if self.reparam not in REPARAMS:
            raise ValueError(f"reparam={self.reparam!r}: expected one of {', '.join(REPARAMS)}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r}: expected one of {', '.join(INITS)}")
        if self.method in ("pt2", "lester") and self.prompt_len < 1:
            raise ValueError(f"prompt_len={self.prompt_len}: expected >= 1 for method {self.method}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ValueError(f"prefix_dropout={self.prefix_dropout}: expected in [0, 1)")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden={self.mlp_hidden}: expected >= 1")
        parse_layers(self.prompt_layers, None)  # syntax check now; range check once the depth is known

    @property
    def has_prompt(self) -> bool:
        return self.method in ("pt2", "lester")


def parse_layers(spec: str | list[int], num_layers: int | None) -> list[int]:
    """Resolve ``prompt_layers`` to sorted layer indices. ``num_layers=None`` only checks the syntax."""
    n = num_layers if num_layers is not None else 10**9
    if isinstance(spec, list):
        idx = spec
    else:
        s = str(spec).strip().replace(" ", "")
        try:
            if s == "all":
                idx = list(range(n)) if num_layers is not None else []
            elif s.startswith(("last:", "first:")):
                k = int(s.split(":", 1)[1])
                if k < 1:
                    raise ValueError
                k = min(k, n)
                idx = list(range(n - k, n)) if s.startswith("last:") else list(range(k))
                if num_layers is None:
                    idx = []
            else:
                idx = [int(x) for x in s.split(",") if x != ""]
                if not idx:
                    raise ValueError
        except ValueError:
            raise ValueError(f"prompt_layers={spec!r}: expected all, last:N, first:N (N>=1) or a list like 0,2,5") \
                from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        depth = f"for a {num_layers}-layer backbone" if num_layers is not None else "(layers count from 0)"
        raise ValueError(f"prompt_layers={spec!r}: layer {bad[0]} out of range {depth}")
    return sorted(set(idx))
