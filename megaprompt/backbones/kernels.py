"""Attention over [prefix ; real] keys on fused kernels, with the materialised-mask path as the reference.

The rule every kernel implements (P-Tuning v2, Liu et al., ACL 2022): each real query sees every unmasked
prefix slot; among real tokens, padding keys are hidden and decoders keep causal order (query i sees real
keys 0..i). Kernels, tried in the order of ``attention_kernels()``; the first that can express the call runs:

* ``sdpa`` - ``F.scaled_dot_product_attention`` with no explicit mask or with a key mask of shape
  (B, 1, 1, P+L): encoders (any padding / prefix mask: a key mask is all they need), and decoders without a
  prefix and without padding (``is_causal=True``). SDPA can pick flash (no mask) or memory-efficient
  (broadcast key mask) kernels on GPU.
* ``sdpa_causal`` - decoders with a prefix and no padding. With Lk = P + L keys and L queries, causal
  alignment at the *bottom-right* corner (``torch.nn.attention.bias.causal_lower_right``: query i sees keys
  0..i+P) is exactly "all P prefix slots + real keys up to i". (``is_causal=True`` aligns top-left: query i
  would see keys 0..i, i.e. only prefix slots for i < P - wrong.) On GPU it dispatches to flash / memory-
  efficient attention with ``causal_lower_right``; elsewhere an (L, P+L) bool mask (no batch factor) is
  built once per forward (torch itself would build it per call for ``causal_lower_right`` off the GPU).
* ``flex`` - ``torch.nn.attention.flex_attention`` with a block mask of prefix + causal + key padding +
  prefix mask, built once per forward and prefix length (``KeyPadding.block_mask``) and shared by all
  layers. Compiled on GPU. On CPU, flex has no backward, so it is tried there only for inference.
* ``reference`` - today's path, kept as the reference and fallback: an explicit (B, 1, L, P+L) bool mask
  and SDPA, or the eager softmax when attention weights are asked for (``output_attentions``, an
  ``eager`` backbone) or when transformers handed a mask pattern we do not describe (sliding windows...).

No fused kernel materialises a per-layer O(L^2) mask. ``KERNEL_CALLS`` counts calls per kernel so tests can
prove which one ran. The entry point ``attend`` takes the prefix per call (no model state), so it can be
rewired to wherever the prefix comes from.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

KERNELS = ("sdpa", "sdpa_causal", "flex", "reference")
KERNEL_CALLS: Counter[str] = Counter()
_forced: tuple[str, ...] | None = None


class KeyPadding:
    """The real-token mask of one forward, described instead of materialised.

    ``padding`` (B, L) bool, True = a real token (None = no padding); ``causal``: decoders. One object per
    forward is shared by every layer (transformers builds the mask once), so what kernels derive from it
    (a block mask, a dense mask) is cached here, once per forward.
    """

    def __init__(self, padding: torch.Tensor | None, causal: bool, length: int) -> None:
        self.padding, self.causal, self.length = padding, causal, length
        self._cache: dict[Any, Any] = {}

    def dense(self, device: torch.device) -> torch.Tensor:
        """(B|1, 1, L, L) bool, True = attend: what transformers' ``sdpa_mask`` would have built."""
        key = ("dense", device)
        if key not in self._cache:
            n = self.length
            mask = torch.ones(n, n, dtype=torch.bool, device=device)
            if self.causal:
                mask = mask.tril()
            mask = mask[None, None]
            if self.padding is not None:
                mask = mask & self.padding.to(device)[:, None, None, :]
            self._cache[key] = mask
        return self._cache[key]

    def lower_right(self, p_len: int, device: torch.device) -> torch.Tensor:
        """(L, P+L) bool: causal order aligned at the bottom-right corner (query i sees keys 0..i+P)."""
        key = ("lower_right", p_len, device)
        if key not in self._cache:
            self._cache[key] = torch.ones(self.length, p_len + self.length, dtype=torch.bool,
                                          device=device).tril(p_len)
        return self._cache[key]

    def block_mask(self, p_len: int, prefix_mask: torch.Tensor | None, batch: int, device: torch.device) -> Any:
        """FlexAttention block mask over [prefix ; real] keys for L queries (cached per prefix length/mask)."""
        key = ("block", p_len, None if prefix_mask is None else id(prefix_mask), batch, device)
        if key not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            self._cache[key] = create_block_mask(_mask_mod(self.padding, prefix_mask, p_len, self.causal),
                                                 batch, None, self.length, p_len + self.length, device=device)
        return self._cache[key]


def _mask_mod(padding: torch.Tensor | None, prefix_mask: torch.Tensor | None, p_len: int, causal: bool) -> Any:
    """FlexAttention mask_mod: key kv < P is prefix slot kv, else real key kv - P."""
    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        real = kv - p_len
        ok = real >= 0
        if causal:
            ok = ok & (real <= q)
        if padding is not None:
            ok = ok & padding[b, real.clamp(min=0)]
        if p_len:
            slot = kv < p_len
            ok = ok | (slot & prefix_mask[b, kv.clamp(max=p_len - 1)]) if prefix_mask is not None else ok | slot
        return ok
    return mask_mod


# ---- which kernels may run -----------------------------------------------------------------------------
def default_kernels(device: torch.device) -> tuple[str, ...]:
    """GPU: every kernel; CPU: flex has no backward there and its eager form is slow, so not by default."""
    if device.type == "cuda":
        return KERNELS
    return ("sdpa", "sdpa_causal", "reference")


def attention_kernels(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The kernels tried, in order, on ``device`` (``set_attention_kernels`` overrides)."""
    return _forced if _forced is not None else default_kernels(torch.device(device))


def set_attention_kernels(names: Sequence[str] | None) -> None:
    """Restrict (and order) the kernels tried; ``None`` restores the per-device default. "reference" is
    always the last resort, so a forced kernel that cannot express a call falls back to it."""
    global _forced
    if names is None:
        _forced = None
        return
    bad = [n for n in names if n not in KERNELS]
    if bad:
        raise ValueError(f"unknown attention kernel(s) {bad}; expected some of {', '.join(KERNELS)}")
    _forced = tuple(names)


@contextlib.contextmanager
def kernels(*names: str) -> Iterator[None]:
    """``with kernels("flex"):`` - ``set_attention_kernels`` for a block, restoring the previous choice."""
    before = _forced
    set_attention_kernels(names)
    try:
        yield
    finally:
        set_attention_kernels(before)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def choose_kernel(query: torch.Tensor, key: torch.Tensor, prefix_kv: tuple[torch.Tensor, torch.Tensor] | None,
                  prefix_mask: torch.Tensor | None, mask: KeyPadding | torch.Tensor | None, causal: bool,
                  dropout: float = 0.0, need_weights: bool = False) -> str:
    """The first kernel of ``attention_kernels(query.device)`` that computes this call exactly."""
    described = mask is None or isinstance(mask, KeyPadding)
    padded = isinstance(mask, KeyPadding) and mask.padding is not None
    has_prefix = prefix_kv is not None
    for name in attention_kernels(query.device):
        if name == "reference":
            return name
        if need_weights or not described or query.shape[2] != key.shape[2]:
            continue            # weights, an unknown mask pattern, or a cache: only the reference knows
        if name == "sdpa" and (not causal or (not has_prefix and not padded)):
            return name
        if name == "sdpa_causal" and causal and has_prefix and not padded and prefix_mask is None:
            return name
        if name == "flex" and dropout == 0.0 and (query.device.type == "cuda" or not _needs_grad(
                query, key, *(prefix_kv or ()))):
            return name
    return "reference"


# ---- the kernels ---------------------------------------------------------------------------------------
def _repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x if x.shape[1] == n_heads else x.repeat_interleave(n_heads // x.shape[1], dim=1)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool,
          p_len: int, scaling: float | None, dropout: float, kp: KeyPadding) -> torch.Tensor:
    gqa = k.shape[1] != q.shape[1]
    if causal:
        # no prefix: is_causal; with a prefix: bottom-right causal alignment (module docstring)
        if p_len == 0:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                                  enable_gqa=gqa)
        if q.device.type == "cuda":
            from torch.nn.attention.bias import causal_lower_right

            if gqa:          # CausalBias calls the flash/efficient ops directly, without SDPA's GQA path
                k, v, gqa = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1]), False
            try:
                bias = causal_lower_right(q.shape[2], k.shape[2])
            except RuntimeError:     # a tensor subclass cannot be made under some dispatch modes
                bias = None
            if bias is not None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scaling,
                                                      enable_gqa=gqa)
        # elsewhere (CPU, meta) torch would materialise the same (Lq, P+Lk) mask per call; it is built once per
        # forward instead and shared by the layers (no batch factor)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=kp.lower_right(p_len, q.device), dropout_p=dropout,
                                              scale=scaling, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout, scale=scaling,
                                          enable_gqa=gqa)


_compiled_flex: Any = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any, scaling: float | None) -> torch.Tensor:
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if q.device.type == "cuda":      # eager flex is a slow reference implementation; compiled it is fused
        if _compiled_flex is None:   # default dynamic=None: a second sequence length compiles a dynamic one
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    return fn(q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=k.shape[1] != q.shape[1])


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float | None,
               dropout: float, training: bool, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if need_weights:
        k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(2, 3)) * scale
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        probs = F.dropout(probs, p=dropout, training=training)
        return torch.matmul(probs, v), probs
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         is_causal=False, enable_gqa=k.shape[1] != q.shape[1])
    return out, None


def dense_real_mask(mask: KeyPadding | torch.Tensor | None, q_len: int, k_len: int, causal: bool,
                    device: torch.device) -> torch.Tensor:
    """The real-token mask as bool ``(B|1, 1, Lq, Lk)``, True = attend, whatever form it came in."""
    if isinstance(mask, KeyPadding):
        return mask.dense(device)
    if mask is None:
        if causal and q_len > 1:
            # Causal order among real tokens: query i sees keys 0..i (q_len == k_len without a cache).
            return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
        return torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    mask = mask[:, :, :, :k_len]
    if mask.dtype != torch.bool:  # additive float mask: 0 where allowed, large negative elsewhere
        mask = mask == 0
    return mask


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           prefix_kv: tuple[torch.Tensor, torch.Tensor] | None, prefix_mask: torch.Tensor | None,
           mask: KeyPadding | torch.Tensor | None, causal: bool, scaling: float | None = None,
           dropout: float = 0.0, training: bool = False, need_weights: bool = False,
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of ``query`` (B, H, Lq, d) over [prefix ; real] keys.

    ``key``/``value`` (B, kvH, Lk, d): real tokens; ``prefix_kv`` (B, kvH, P, d) each, or None;
    ``prefix_mask`` (B, P) bool, True = attend (None = all); ``mask``: a ``KeyPadding``, transformers' dense
    mask (bool or additive) or None. Returns ``(out (B, H, Lq, d), weights or None)``.
    """
    drop = dropout if training else 0.0
    name = choose_kernel(query, key, prefix_kv, prefix_mask, mask, causal, drop, need_weights)
    KERNEL_CALLS[name] += 1
    bsz, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    p_len = 0
    if prefix_kv is not None:
        pk, pv = prefix_kv
        p_len = pk.shape[2]
        key = torch.cat([pk.to(key.dtype), key], dim=2)        # (B, kvH, P+Lk, d)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
    if name in ("sdpa", "sdpa_causal"):
        key_mask = None
        padding = mask.padding if isinstance(mask, KeyPadding) else None
        if not causal and (padding is not None or prefix_mask is not None):
            parts = ([prefix_mask.to(query.device) if prefix_mask is not None else
                      torch.ones(bsz, p_len, dtype=torch.bool, device=query.device)] if p_len else [])
            parts.append(padding.to(query.device) if padding is not None else
                         torch.ones(bsz, k_len, dtype=torch.bool, device=query.device))
            key_mask = torch.cat(parts, dim=1)[:, None, None, :]   # (B, 1, 1, P+Lk): O(B*(P+L)), no L^2
        kp = mask if isinstance(mask, KeyPadding) else KeyPadding(None, causal, q_len)
        return _sdpa(query, key, value, key_mask, causal, p_len, scaling, drop, kp), None
    if name == "flex":
        kp = mask if isinstance(mask, KeyPadding) else KeyPadding(None, causal, q_len)
        return _flex(query, key, value, kp.block_mask(p_len, prefix_mask, bsz, query.device), scaling), None
    real = dense_real_mask(mask, q_len, k_len, causal, query.device)
    if p_len:
        pm = torch.ones(1, 1, q_len, p_len, dtype=torch.bool, device=query.device) if prefix_mask is None \
            else prefix_mask[:, None, None, :].expand(bsz, 1, q_len, p_len)
        # Every real query sees every (unmasked) prefix slot; the real-token part keeps its own rule.
        b = max(pm.shape[0], real.shape[0])
        real = torch.cat([pm.expand(b, 1, q_len, p_len), real.expand(b, 1, q_len, real.shape[-1])], dim=-1)
    return _reference(query, key, value, real, scaling, dropout, training, need_weights)


__all__ = ["KERNELS", "KERNEL_CALLS", "KeyPadding", "attend", "attention_kernels", "choose_kernel",
           "default_kernels", "dense_real_mask", "kernels", "set_attention_kernels"]
