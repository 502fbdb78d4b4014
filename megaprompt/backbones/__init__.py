"""Backbone families megaprompt can prompt, and the registry that picks an adapter by ``model_type``."""
from __future__ import annotations

from megaprompt.errors import UserError
from megaprompt.backbones.attention import ATTN_NAME, PREFIX_KWARG, PrefixState, layer_prefix
from megaprompt.backbones.base import BackboneAdapter, BackboneSpec, fingerprint, fingerprint_tensors, spec_from_config
from megaprompt.backbones.bert import BertAdapter
from megaprompt.backbones.deberta import DebertaAdapter
from megaprompt.backbones.decoder import DecoderAdapter

_ADAPTERS: dict[str, BackboneAdapter] = {}
for _adapter in (BertAdapter(), DebertaAdapter(), DecoderAdapter()):
    for _t in _adapter.model_types:
        _ADAPTERS[_t] = _adapter

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))


class UnsupportedBackbone(UserError):
    pass


def get_adapter(model_type: str) -> BackboneAdapter:
    """The adapter for a transformers ``model_type``; a clear error lists the supported ones."""
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedBackbone(
            f"backbone model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        ) from None


def is_decoder_type(model_type: str) -> bool:
    return get_adapter(model_type).is_decoder


__all__ = [
    "ATTN_NAME", "PREFIX_KWARG", "BackboneAdapter", "BackboneSpec", "PrefixState", "SUPPORTED_MODEL_TYPES",
    "UnsupportedBackbone", "fingerprint", "fingerprint_tensors", "get_adapter", "is_decoder_type", "layer_prefix",
    "spec_from_config",
]
