"""Prefix keys/values injected through transformers' attention interface (no KV-cache path).

P-Tuning v2 (Liu et al., ACL 2022, Sec. 3) prepends trainable key/value vectors to the attention of every
layer. The original code passed them as ``past_key_values``. In transformers 5 that route has two defects we
must avoid:

* ``GradientCheckpointingLayer`` sets the cache to ``None`` under activation checkpointing, so the prefix
  silently disappears (and gets no gradient) exactly when a large backbone needs checkpointing;
* a cache shifts the query positions (and RoPE) of real tokens by ``prompt_len``.

Instead we register one attention implementation, ``"megaprompt"``, in ``ALL_ATTENTION_FUNCTIONS``. The
model computes q/k/v for real tokens as usual (positions 0..L-1, RoPE applied), then calls our function,
which concatenates the prefix keys/values of *that* layer in front of the real ones, extends the mask so
every query sees every (unmasked) prefix slot, and runs SDPA (or the eager math when asked for weights).

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
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

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


def _bool_mask(attention_mask: torch.Tensor | None, module: torch.nn.Module, q_len: int, k_len: int,
               is_causal: bool | None, device: torch.device) -> torch.Tensor:
    """The real-token mask as bool ``(B|1, 1, Lq, Lk)``, True = attend, whatever form transformers gave."""
    if attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
        if causal and q_len > 1:
            # Causal order among real tokens: query i sees keys 0..i (q_len == k_len without a cache).
            return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
        return torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    mask = attention_mask[:, :, :, :k_len]
    if mask.dtype != torch.bool:  # additive float mask: 0 where allowed, large negative elsewhere
        mask = mask == 0
    return mask


def prefix_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,            # (B, H, Lq, d)
    key: torch.Tensor,              # (B, kvH, Lk, d)
    value: torch.Tensor,            # (B, kvH, Lk, d)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over [prefix ; real] keys. Returns ``(B, Lq, H, d)`` like transformers' own functions."""
    prefix = layer_prefix(module, kwargs)
    bsz, n_heads, q_len, _ = query.shape
    mask = _bool_mask(attention_mask, module, q_len, key.shape[2], is_causal, query.device)
    if prefix is not None:
        pk, pv, pmask = prefix
        p_len = pk.shape[2]
        key = torch.cat([pk.to(key.dtype), key], dim=2)        # (B, kvH, P+Lk, d)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
        if pmask is None:
            pm = torch.ones(1, 1, q_len, p_len, dtype=torch.bool, device=query.device)
        else:
            pm = pmask[:, None, None, :].expand(bsz, 1, q_len, p_len)
        # Every real query sees every (unmasked) prefix slot; the real-token part keeps its own rule.
        mask = torch.cat([pm.expand(max(pm.shape[0], mask.shape[0]), 1, q_len, p_len),
                          mask.expand(max(pm.shape[0], mask.shape[0]), 1, q_len, mask.shape[-1])], dim=-1)
    kv_heads = key.shape[1]
    if getattr(module, "_mp_eager", False) or kwargs.get("output_attentions"):
        if kv_heads != n_heads:
            key = key.repeat_interleave(n_heads // kv_heads, dim=1)
            value = value.repeat_interleave(n_heads // kv_heads, dim=1)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = torch.matmul(query, key.transpose(2, 3)) * scale
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        probs = F.dropout(probs, p=dropout, training=module.training)
        out = torch.matmul(probs, value)
        return out.transpose(1, 2).contiguous(), probs
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
        is_causal=False, enable_gqa=kv_heads != n_heads,
    )
    return out.transpose(1, 2).contiguous(), None


def _always_materialised_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    # Ask transformers for an explicit bool mask: SDPA's implicit ``is_causal`` cannot describe a key axis
    # that has prefix slots in front of the real tokens.
    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register ``"megaprompt"`` in transformers' attention and mask interfaces (idempotent)."""
    AttentionInterface.register(ATTN_NAME, prefix_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, _always_materialised_mask)


register()
