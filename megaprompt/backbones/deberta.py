"""DeBERTa-v2/v3 (the paper's NER backbone): prefix keys inside disentangled attention.

DeBERTa's ``DisentangledSelfAttention`` neither calls ``ALL_ATTENTION_FUNCTIONS`` nor has a cache path in
transformers 5 (a cache argument is silently ignored), so the adapter replaces that module's ``forward`` by
``_prefix_forward`` below. It reproduces the module's own computation for real tokens - content-to-content
scores plus the c2p/p2c relative-position bias from the module's ``disentangled_attention_bias`` - and
prepends content-only scores against the prefix keys. Prefix keys have no position, so they get no
relative-position bias (He et al., 2021, Eq. 2 applies to token pairs only). Unless attention weights are
asked for (or probability dropout is active), the softmax runs on SDPA with the relative-position bias and
the mask as an additive bias (kernel "sdpa"); the explicit path is the reference. DeBERTa builds its
(B, 1, L, L) mask and (B, H, L, L) bias itself, so no kernel can avoid those here.

The module's forward gets no ``**kwargs``, so the per-call prefix reaches it through the contextvar that
``forward`` below sets around the call (``attention.call_prefix``); under gradient checkpointing a
``context_fn`` sets the same prefix again around the recompute.
"""
from __future__ import annotations

import contextlib
import types
from typing import Any

import torch
import torch.nn as nn

from megaprompt.backbones.attention import _CALL_PREFIX, PrefixState, call_prefix, layer_prefix
from megaprompt.backbones.base import BackboneAdapter
from megaprompt.backbones.kernels import KERNEL_CALLS, attention_kernels


def _prefix_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                    output_attentions: bool = False, query_states: torch.Tensor | None = None,
                    relative_pos: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if query_states is None:
        query_states = hidden_states
    heads = self.num_attention_heads
    # (B*H, L, d) throughout, as in the original module.
    q = self.transpose_for_scores(self.query_proj(query_states), heads)
    k = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    v = self.transpose_for_scores(self.value_proj(hidden_states), heads)
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * scale_factor).to(q.dtype)
    rel = None
    if self.relative_attention:
        rel = self.disentangled_attention_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), scale_factor)
    bsz, q_len, k_len, d = q.size(0) // heads, q.size(-2), k.size(-2), q.size(-1)
    mask = attention_mask.bool()                                    # (B, 1, Lq, Lk)
    prefix = layer_prefix(self)                                     # the call's prefix (contextvar)
    p_len = 0
    if prefix is not None:
        pk, pv, pmask = prefix                                      # (B, H, P, d)
        p_len = pk.shape[2]
        pm = torch.ones(bsz, 1, q_len, p_len, dtype=torch.bool, device=mask.device) if pmask is None \
            else pmask[:, None, None, :].expand(bsz, 1, q_len, p_len)
        mask = torch.cat([pm, mask.expand(bsz, 1, q_len, k_len)], dim=-1)        # (B, 1, Lq, P+Lk)
        k = torch.cat([pk.to(k.dtype).reshape(bsz * heads, p_len, d), k], dim=1)
        v = torch.cat([pv.to(v.dtype).reshape(bsz * heads, p_len, d), v], dim=1)
    fused = not output_attentions and "sdpa" in attention_kernels(q.device) and not (
        self.training and self.dropout.p > 0)           # dropout of the probabilities: the reference's stream
    KERNEL_CALLS["sdpa" if fused else "reference"] += 1
    if rel is not None:
        rel = rel.view(bsz, heads, q_len, k_len)
        if p_len:                                       # prefix slots have no position: no bias
            rel = torch.cat([rel.new_zeros(bsz, heads, q_len, p_len), rel], dim=-1)
    if fused:
        # softmax(q k^T / scale + rel) v on SDPA; masked entries get finfo.min (not -inf), as the reference
        # fills them, so a fully masked row (a padding query without prefix) stays uniform, not NaN.
        fill = torch.finfo(q.dtype).min
        bias = rel.masked_fill(~mask, fill) if rel is not None else \
            torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, fill)
        ctx = nn.functional.scaled_dot_product_attention(
            q.view(bsz, heads, q_len, d), k.view(bsz, heads, -1, d), v.view(bsz, heads, -1, d),
            attn_mask=bias, scale=1.0 / float(scale))
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        return (ctx.view(ctx.size()[:-2] + (-1,)), None)
    scores = torch.bmm(q, k.transpose(-1, -2) / scale).view(bsz, heads, q_len, -1)   # (B, H, Lq, P+Lk)
    if rel is not None:
        scores = scores + rel
    scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = self.dropout(nn.functional.softmax(scores, dim=-1))
    ctx = torch.bmm(probs.view(-1, probs.size(-2), probs.size(-1)), v)
    ctx = ctx.view(-1, heads, ctx.size(-2), ctx.size(-1)).permute(0, 2, 1, 3).contiguous()
    ctx = ctx.view(ctx.size()[:-2] + (-1,))
    return (ctx, probs if output_attentions else None)


def _recompute_context() -> tuple[Any, Any]:
    """Checkpoint ``context_fn``: the recompute of a layer (during backward, outside ``forward``'s block)
    sees the prefix its first run saw."""
    return contextlib.nullcontext(), call_prefix(_CALL_PREFIX.get())


class DebertaAdapter(BackboneAdapter):
    model_types = ("deberta-v2",)
    mlm_model_types = ("deberta-v2",)
    is_decoder = False

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.encoder.layer)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.attention.self for layer in self.layers(model)]

    def has_mlm_head(self, config: Any) -> bool:
        # non-legacy DeBERTa-v2 heads take the word embeddings as a second forward argument: not supported
        return super().has_mlm_head(config) and getattr(config, "legacy", True)

    def checkpoint_kwargs(self) -> dict[str, Any]:
        return {"use_reentrant": False, "context_fn": _recompute_context}

    def install(self, model: nn.Module) -> None:
        modules = self.attention_modules(model)
        if all(hasattr(m, "_mp_layer") for m in modules):
            return                                                  # already installed on this model
        self._tag(model, eager=True)
        for module in modules:
            module.forward = types.MethodType(_prefix_forward, module)

    def forward(self, model: nn.Module, prefix: PrefixState | None, **inputs: Any) -> Any:
        with call_prefix(prefix):
            return model(**inputs)
