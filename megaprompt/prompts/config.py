"""Prompt configuration shared by every method (P-Tuning v2 Sec. 3-4; Lester et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass

from megaprompt.options import FieldError, check_fields, opt

# The methods with a prompt, and where it enters the backbone: "prefix" = keys/values in the attention of the
# chosen layers (no positions taken); "input" = embeddings prepended to the input (they take positions).
# Adding a prompt method: its module (prompts/<method>.py), an entry here, a line in ``build_prompt``.
PROMPT_KINDS = {"pt2": "prefix", "lester": "input"}
METHODS = (*PROMPT_KINDS, "ft", "head")
REPARAMS = ("none", "mlp")
INITS = ("normal", "zero")


@dataclass
class PromptConfig:
    """Which parameters a run trains, and the shape of its prompt."""

    method: str = opt("pt2", "model and prompt", choices=METHODS)
    """pt2: deep prefix in every chosen layer; lester: input-embedding prompt; ft: full fine-tuning; head:
    frozen backbone, head only (linear probe)."""
    prompt_len: int = opt(16, "model and prompt")
    """Prefix/prompt length P. The paper uses ~8-32 for classification and 100+ for hard labeling."""
    reparam: str = opt("none", "model and prompt", choices=REPARAMS)
    """none: a direct table (P, layers*2*kv_heads*head_dim); mlp: Embedding(P, hidden)->Linear->Tanh->Linear."""
    mlp_hidden: int = opt(512, "model and prompt", ge=1)
    """Hidden width of the MLP reparameterization (official P-tuning-v2 code: prefix_hidden_size=512)."""
    prompt_layers: str = opt("all", "model and prompt")
    """Layers that get a prefix: all, last:N, first:N, or a comma list like 0,3,5 (the depth ablation)."""
    prefix_dropout: float = opt(0.1, "model and prompt", ge=0, lt=1)
    """Dropout on prefix keys/values (the official code applies hidden_dropout_prob there)."""
    init: str = opt("normal", "model and prompt", choices=INITS)
    """normal (std=init_std) or zero."""
    init_std: float = opt(1.0, "model and prompt", ge=0)
    """Std of the normal init; 1.0 matches nn.Embedding's default used by the official code."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.prompt_len < (1 if self.has_prompt else 0):
            raise FieldError("prompt_len", f"prompt_len={self.prompt_len}: expected >= 1 for method {self.method}"
                             if self.has_prompt else f"prompt_len={self.prompt_len}: expected >= 0")
        try:
            parse_layers(self.prompt_layers, None)  # syntax check now; range check once the depth is known
        except ValueError as err:
            raise FieldError("prompt_layers", str(err)) from None

    @property
    def kind(self) -> str | None:
        """"prefix", "input", or None (ft, head: no prompt)."""
        return PROMPT_KINDS.get(self.method)

    @property
    def has_prompt(self) -> bool:
        return self.kind is not None


def parse_layers(spec: str | list[int], num_layers: int | None) -> list[int]:
    """Resolve ``prompt_layers`` to sorted layer indices. ``num_layers=None`` only checks the syntax.

    Never clamps: ``last:99`` on a 6-layer backbone is an error, not a silent ``last:6``.
    """
    n = num_layers if num_layers is not None else 10**9
    if isinstance(spec, list):
        idx = spec
    else:
        s = str(spec).strip().replace(" ", "")
        kind, _, count = s.partition(":")
        try:
            if s == "all":
                idx = list(range(n)) if num_layers is not None else []
            elif kind in ("last", "first"):
                k = int(count)
                if k < 1:
                    raise ValueError
            else:
                idx = [int(x) for x in s.split(",") if x != ""]
                if not idx:
                    raise ValueError
        except ValueError:
            raise ValueError(f"prompt_layers={spec!r}: expected all, last:N, first:N (N>=1) or a list like 0,2,5") \
                from None
        if kind in ("last", "first"):
            if num_layers is not None and k > num_layers:
                raise ValueError(f"prompt_layers={spec!r}: {kind}:{k} asks for {k} layers but the backbone has "
                                 f"{num_layers}")
            idx = [] if num_layers is None else list(range(n - k, n)) if kind == "last" else list(range(k))
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        depth = f"for a {num_layers}-layer backbone" if num_layers is not None else "(layers count from 0)"
        raise ValueError(f"prompt_layers={spec!r}: layer {bad[0]} out of range {depth}")
    return sorted(set(idx))
