"""Backbone adapters: the only code that knows where attention lives inside a transformers model.

An adapter answers three questions for one model family: the shape facts a prompt needs (``BackboneSpec``),
which module is the self-attention of layer i, and how to make that module read prefix keys/values
(``install``). Everything else in megaprompt talks to backbones only through this protocol.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch.nn as nn

from megaprompt.backbones.attention import ATTN_NAME, PrefixHolder


@dataclass(frozen=True)
class BackboneSpec:
    """Shape facts about a backbone that prompts, heads, exports and tools rely on."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None
    is_decoder: bool          # decoders pool the last real token and attend causally
    name: str = ""
    embedding_size: int = 0   # width of the input word embeddings (ELECTRA/DeBERTa may differ); 0 = hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_from_config(config: Any, is_decoder: bool, name: str = "") -> BackboneSpec:
    """Read a ``BackboneSpec`` from a transformers config (works on meta-device models too)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "attention_head_size", None) \
        or config.hidden_size // heads
    return BackboneSpec(
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        max_positions=getattr(config, "max_position_embeddings", None),
        is_decoder=is_decoder,
        name=name or getattr(config, "_name_or_path", "") or "",
        embedding_size=getattr(config, "embedding_size", None) or config.hidden_size,
    )


class BackboneAdapter:
    """Base adapter for families whose attention goes through ``ALL_ATTENTION_FUNCTIONS``."""

    model_types: tuple[str, ...] = ()
    is_decoder: bool = False

    def spec(self, model: nn.Module, name: str = "") -> BackboneSpec:
        return spec_from_config(model.config, self.is_decoder, name)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The self-attention module of every layer, in layer order."""
        raise NotImplementedError

    def install(self, model: nn.Module) -> PrefixHolder:
        """Route the model's attention through the prefix-aware function; return the shared holder."""
        current = model.config._attn_implementation or "sdpa"
        if current not in ("sdpa", "eager", ATTN_NAME):
            # flash kernels take no arbitrary mask; torch SDPA picks a fused kernel on GPU anyway.
            current = "sdpa"
        holder = PrefixHolder(inner="eager" if current == "eager" else "sdpa")
        model.config._attn_implementation = ATTN_NAME
        self._tag(model, holder)
        return holder

    def _tag(self, model: nn.Module, holder: PrefixHolder) -> None:
        for i, module in enumerate(self.attention_modules(model)):
            # Plain attributes (not submodules): DeepSpeed and state_dict never see them.
            object.__setattr__(module, "_mp_holder", holder)
            object.__setattr__(module, "_mp_layer", i)
