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

Where a prefix comes from: the prefix is an argument of each call, never state owned by a model. The adapter
passes a ``PrefixState`` to the backbone's forward as the keyword ``megaprompt_prefix`` (``PREFIX_KWARG``);
transformers 5 forwards ``**kwargs`` from the model through every layer to the attention function, so each
attention call reads its own layer's slice with ``layer_prefix(module, kwargs)`` (the adapter tags every
attention module with ``_mp_layer``, its layer index). Families without that kwargs path (DeBERTa-v2) read
the contextvar ``_CALL_PREFIX`` that their adapter sets around the call. Gradient checkpointing re-runs a
layer with the very kwargs (or, via a checkpoint ``context_fn``, the contextvar) of the first run, so the
recompute sees the same tensors. Two ``PromptedModel``s on one backbone therefore never interfere. Any
attention kernel (eager, SDPA, fused) gets its prefix through ``layer_prefix`` only.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from transformers.masking_utils import (AttentionMaskInterface, bidirectional_mask_function, causal_mask_function,
                                        prepare_padding_mask, sdpa_mask)
from transformers.modeling_utils import AttentionInterface

from megaprompt.backbones.kernels import KeyPadding, attend

ATTN_NAME = "megaprompt"


PREFIX_KWARG = "megaprompt_prefix"


@dataclass
class PrefixState:
    """Prefix tensors for one forward pass, per backbone layer.

    ``kv[i]`` is ``(key, value)`` for layer i, each ``(B, kv_heads, P_i, head_dim)``, or None for a layer no
    row prompts. ``mask[i]`` is ``(B, P_i)`` bool, True = attend, or None = every slot visible to every row.
    Per-layer masks let rows with different prompt lengths or ``prompt_layers`` share one batch.
    """

    kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    mask: list[torch.Tensor | None]


# The prefix of the current call, for attention modules that get no kwargs (DeBERTa-v2).
_CALL_PREFIX: contextvars.ContextVar[PrefixState | None] = contextvars.ContextVar("megaprompt_prefix", default=None)


@contextlib.contextmanager
def call_prefix(state: PrefixState | None) -> Iterator[None]:
    """Make ``state`` the prefix of the calls inside the block (and restore the outer one after)."""
    token = _CALL_PREFIX.set(state)
    try:
        yield
    finally:
        _CALL_PREFIX.reset(token)


def layer_prefix(module: torch.nn.Module, kwargs: dict[str, Any] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(key, value, mask) of this call for the layer of ``module``, or None when the layer gets no prefix.

    The one place every attention kernel reads its prefix from: the call's kwargs first, else the contextvar.
    """
    layer = getattr(module, "_mp_layer", None)
    if layer is None:
        return None
    state = (kwargs or {}).get(PREFIX_KWARG)
    if state is None:
        state = _CALL_PREFIX.get()
    if state is None or state.kv[layer] is None:
        return None
    key, value = state.kv[layer]
    return key, value, state.mask[layer]


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
    prefix = layer_prefix(module, kwargs)
    if isinstance(attention_mask, KeyPadding):
        causal = attention_mask.causal
    else:
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    # eager backbones (and output_attentions) keep returning weights: the explicit-mask reference path
    need_weights = bool(getattr(module, "_mp_eager", False) or kwargs.get("output_attentions"))
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
