"""Prefix keys/values injected through transformers' attention interface (no KV-cache path).

P-Tuning v2 (Liu et al., ACL 2022, Sec. 3) prepends trainable key/value vectors to the attention of every
layer. The original code passed them as ``past_key_values``. In transformers 5 that route has two defects we
must avoid:

* ``GradientCheckpointingLayer`` sets the cache to ``None`` under activation checkpointing, so the prefix
  silently disappears (and gets no gradient) exactly when a large backbone needs checkpointing;
* a cache shifts the query positions (and RoPE) of real tokens by ``prompt_len``.

Instead we register one attention implementation, ``"megaprompt"``, in ``ALL_ATTENTION_FUNCTIONS``. The
model computes q/k/v for real tokens as usual (positions 0..L-1, RoPE applied), then calls our function,
which puts the prefix keys/values of *that* layer in front of the real ones so every query sees every
(unmasked) prefix slot. Which kernel computes that (fused SDPA, bottom-right causal SDPA, FlexAttention, or
the explicit-mask reference) is ``kernels.choose_kernel``'s decision; the mask hook (``described_mask``)
hands the kernels a ``KeyPadding`` description instead of a materialised (B, 1, L, L) mask.

Where a prefix comes from: each attention module is tagged by the backbone adapter with ``_mp_holder`` (a
``PrefixHolder`` shared by the whole model) and ``_mp_layer`` (its layer index). ``PromptedModel.forward``
stores the current ``PrefixState`` in the holder. The state is deliberately *not* cleared after forward:
under activation checkpointing the layer is re-run during backward and must see the very same tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers.masking_utils import (AttentionMaskInterface, bidirectional_mask_function, causal_mask_function,
                                        prepare_padding_mask, sdpa_mask)
from transformers.modeling_utils import AttentionInterface

from megaprompt.backbones.kernels import KeyPadding, attend

ATTN_NAME = "megaprompt"


@dataclass
class PrefixState:
    """Prefix tensors for one forward pass.

    kv[i] is ``(key, value)`` for backbone layer i, each ``(B, kv_heads, P, head_dim)``, or None for layers
    without a prompt (``prompt_layers`` subset). ``mask`` is ``(B, P)`` bool, True = attend (None = all).
    """

    kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    mask: torch.Tensor | None = None


@dataclass
class PrefixHolder:
    """Per-model mailbox between ``PromptedModel.forward`` and the patched attention modules."""

    state: PrefixState | None = None
    # The implementation the backbone used before we took over: "eager" keeps returning weights.
    inner: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict)


def layer_prefix(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(key, value, mask) for the layer of ``module``, or None when this layer gets no prefix."""
    holder: PrefixHolder | None = getattr(module, "_mp_holder", None)
    if holder is None or holder.state is None:
        return None
    kv = holder.state.kv[module._mp_layer]
    if kv is None:
        return None
    return kv[0], kv[1], holder.state.mask


def prefix_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,            # (B, H, Lq, d)
    key: torch.Tensor,              # (B, kvH, Lk, d)
    value: torch.Tensor,            # (B, kvH, Lk, d)
    attention_mask: KeyPadding | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over [prefix ; real] keys. Returns ``(B, Lq, H, d)`` like transformers' own functions."""
    holder: PrefixHolder | None = getattr(module, "_mp_holder", None)
    prefix = layer_prefix(module)
    if isinstance(attention_mask, KeyPadding):
        causal = attention_mask.causal
    else:
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    need_weights = bool((holder is not None and holder.inner == "eager") or kwargs.get("output_attentions"))
    out, weights = attend(query, key, value, None if prefix is None else prefix[:2],
                          None if prefix is None else prefix[2], attention_mask, causal, scaling, dropout,
                          module.training, need_weights)
    return out.transpose(1, 2).contiguous(), weights


def described_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                   mask_function: Callable = causal_mask_function, attention_mask: torch.Tensor | None = None,
                   local_size: int | None = None, **kwargs: Any) -> KeyPadding | torch.Tensor | None:
    """transformers' mask hook for ``"megaprompt"``: a ``KeyPadding`` for plain causal / bidirectional masks
    over a full sequence (the kernels decide how to apply it, with prefix slots in front), else the explicit
    bool mask. The all-real check is one host sync per forward, as in transformers' own SDPA mask."""
    plain = mask_function is causal_mask_function or mask_function is bidirectional_mask_function
    if plain and local_size is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if padding is not None:
            padding = padding.bool()
            # meta (the memory estimator's shape-only forward of a full batch) cannot be read: no padding
            if padding.device.type == "meta" or bool(padding.all()):
                padding = None
        return KeyPadding(padding, causal=mask_function is causal_mask_function, length=q_length)
    # an explicit mask: SDPA's implicit ``is_causal`` cannot describe prefix slots in front of real keys
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
                     local_size, **kwargs)


def register() -> None:
    """Register ``"megaprompt"`` in transformers' attention and mask interfaces (idempotent)."""
    AttentionInterface.register(ATTN_NAME, prefix_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, described_mask)


register()
