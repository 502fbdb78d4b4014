"""Activation memory of one training micro-batch, measured on the meta device.

Instead of a per-architecture formula, we run one forward pass of the real ``PromptedModel`` on the meta
device (shapes only, no arithmetic, no memory) under ``torch.autograd.graph.saved_tensors_hooks`` and add
up the bytes of every distinct storage autograd keeps for backward - what training holds between forward
and backward (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
Sec. 4, count the same tensors by hand: 34*s*b*h + 5*a*s^2*b bytes per layer for a GPT layer in 16-bit).
Parameters (and views of them) are excluded: they are model states.

Two things differ between this meta run and a GPU ZeRO-3 run, and are emulated:

* **Fused attention.** On meta, ``F.scaled_dot_product_attention`` would take the math path, which saves
  the (B, H, L, L) probabilities. GPU kernels (flash / memory-efficient) save q, k, v, the output and a
  float32 log-sum-exp (B, H, L), plus the additive bias made from an explicit mask, in the query dtype and
  the mask's own broadcast shape (megaprompt's fused kernels pass none, a (B, 1, 1, P+L) key mask or an
  (L, P+L) causal pattern; see ``backbones.kernels``). ``fused_attention=True`` replaces SDPA by an
  autograd function that saves exactly those. Eager attention (DeBERTa's disentangled attention, any
  ``attn_implementation="eager"``) is measured as is.
* **ZeRO-3's linear.** ``deepspeed.zero.Init`` (which ``HfDeepSpeedConfig`` triggers) replaces
  ``torch.nn.functional.linear`` by ``LinearFunctionForZeroStage3`` when ``memory_efficient_linear`` is
  true (DeepSpeed's default). It saves its input unconditionally, whereas PyTorch's own linear skips saving
  the input when the weight needs no gradient - the activation saving a frozen backbone (P-Tuning v2)
  would otherwise get. ``zero3_linear=True`` emulates DeepSpeed's function.

Activation checkpointing (non-reentrant, per layer) keeps each layer's input and recomputes one layer at a
time in backward: ``outside + sum(layer inputs) + max(per-layer saved)``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ActivationProfile:
    """Bytes autograd saves in one forward, split by where they were saved."""

    outside: int = 0                                  # embeddings, prompt, head, loss
    per_layer: list[int] = field(default_factory=list)
    layer_inputs: list[int] = field(default_factory=list)
    # Bytes of parameters that autograd saves through a *view* (torch's linear saves ``weight.t()`` to
    # compute the input gradient, frozen weights included). Under ZeRO-3 a view keeps the gathered copy of
    # the weight alive after DeepSpeed releases the parameter (it swaps ``param.data``; the view still holds
    # the old storage) until backward: every such layer's full weights stay on every rank between forward
    # and backward. A saved parameter itself (DeepSpeed's memory-efficient linear, norm weights) does not.
    saved_weights: list[int] = field(default_factory=list)
    saved_weights_outside: int = 0

    def total(self, checkpointing: bool = False) -> int:
        inside = sum(self.per_layer)
        if not checkpointing or inside == 0:
            return self.outside + inside
        return self.outside + sum(self.layer_inputs) + max(self.per_layer)

    def gathered_weights(self, checkpointing: bool = False) -> int:
        """Full-weight bytes kept alive through saved views at the forward/backward turn (see above);
        with checkpointing only the layer being recomputed holds any."""
        if checkpointing:
            return max(self.saved_weights, default=0)
        return self.saved_weights_outside + sum(self.saved_weights)


class _FusedSDPA(torch.autograd.Function):
    """Saves what GPU flash/memory-efficient attention saves (no L x L probabilities)."""

    @staticmethod
    def forward(ctx, q, k, v, bias):  # type: ignore[override]
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, bias)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]  # never run: the measurement only does forward
        raise NotImplementedError


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False):
    bias = None
    if attn_mask is not None:
        # A bool mask becomes an additive bias in the query dtype, of the mask's own (broadcast) shape - a
        # (B, 1, 1, P+L) key mask or an (L, P+L) causal pattern stays that small; a float mask is saved as is.
        bias = attn_mask.new_empty(attn_mask.shape, dtype=query.dtype) if attn_mask.dtype == torch.bool \
            else attn_mask
    return _FusedSDPA.apply(query, key, value, bias)


class _Zero3Linear(torch.autograd.Function):
    """DeepSpeed's ``LinearFunctionForZeroStage3``: saves (input, weight, bias) whatever needs a grad."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):  # type: ignore[override]
        out = x.matmul(weight.t())
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise NotImplementedError


def _zero3_linear(x, weight, bias=None):
    return _Zero3Linear.apply(x, weight, bias)


@contextlib.contextmanager
def _patched(fused_attention: bool, zero3_linear: bool) -> Iterator[None]:
    import transformers.masking_utils as mu

    saved = {"sdpa": F.scaled_dot_product_attention, "linear": F.linear,
             "c": mu._ignore_causal_mask_sdpa, "b": mu._ignore_bidirectional_mask_sdpa}
    try:
        # Mask shortcuts call .item() (impossible on meta); a padded batch gets an explicit mask anyway.
        mu._ignore_causal_mask_sdpa = lambda *a, **k: False
        mu._ignore_bidirectional_mask_sdpa = lambda *a, **k: False
        if fused_attention:
            F.scaled_dot_product_attention = _fused_sdpa
        if zero3_linear:
            F.linear = _zero3_linear
        yield
    finally:
        F.scaled_dot_product_attention, F.linear = saved["sdpa"], saved["linear"]
        mu._ignore_causal_mask_sdpa, mu._ignore_bidirectional_mask_sdpa = saved["c"], saved["b"]


def _sid(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def measure(model: nn.Module, batch_size: int, seq_len: int, dtype: str = "bf16", fused_attention: bool = True,
            zero3_linear: bool = False) -> ActivationProfile:
    """Profile one training forward of ``model`` (a ``PromptedModel``, normally on meta) for (batch, seq)."""
    model = model.to(DTYPES[dtype])
    model.train()
    param_sids = {_sid(p) for p in model.parameters()}
    param_impls = {p._cdata for p in model.parameters()}
    prof = ActivationProfile()
    layers = model.adapter.layers(model.backbone)
    prof.per_layer = [0] * len(layers)
    prof.layer_inputs = [0] * len(layers)
    prof.saved_weights = [0] * len(layers)
    weight_views: set[int] = set()
    current = [-1]
    seen: set[int] = set()
    handles = []

    def pre(i):
        def hook(module, args, kwargs):
            current[0] = i
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor):
                prof.layer_inputs[i] = x.numel() * x.element_size()
        return hook

    def post(module, args, kwargs, out):
        current[0] = -1

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Each storage counts once, in the layer running when autograd first saved it (or outside every layer):
        # a weight's view (a transpose, a cast) is a saved weight; anything that is not a parameter is an
        # activation. The parameters themselves are resident anyway and are not counted here.
        sid = _sid(t)
        if sid in param_sids:
            if t._cdata not in param_impls and sid not in weight_views:
                weight_views.add(sid)
                _add(prof.saved_weights, "saved_weights_outside", t)
        elif sid not in seen:
            seen.add(sid)
            _add(prof.per_layer, "outside", t)
        return t

    def _add(per_layer: list[int], outside: str, t: torch.Tensor) -> None:
        nbytes = t.untyped_storage().nbytes()
        if current[0] >= 0:
            per_layer[current[0]] += nbytes
        else:
            setattr(prof, outside, getattr(prof, outside) + nbytes)

    spec = model.spec
    tokens = seq_len + sum(p.prompt_len for p in model.prompts.values() if getattr(p, "kind", "") == "input")
    if spec.max_positions and not spec.is_decoder and tokens > spec.max_positions:
        from megaprompt.costs.params import CostInputError
        raise CostInputError(f"seq_len {seq_len}{' + prompt_len' if tokens > seq_len else ''} = {tokens} tokens "
                             f"exceed the {spec.max_positions} positions of {spec.name or spec.model_type}")
    dev = next(model.parameters()).device     # meta normally; a real device works the same way
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=dev)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=dev)
    labels = torch.zeros(batch_size, dtype=torch.long, device=dev)
    try:
        with _patched(fused_attention, zero3_linear), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=mask, labels=labels)
    finally:
        for h in handles:
            h.remove()
    return prof
