"""Fused attention kernels (``megaprompt.backbones.kernels``) equal the explicit-mask reference path.

For bert, deberta-v2, llama (GQA) and qwen2 (GQA) tiny random backbones, in fp32 (atol 1e-5):
outputs of every kernel that can express the call equal the reference's, with and without padding, with
``prompt_layers`` subsets, with a per-example ``prefix_mask``; prefix gradients are equal too, under
activation checkpointing. ``KERNEL_CALLS`` proves the kernel under test really ran (and the reference did
not). FlexAttention has no backward on CPU, so it is compared in inference only.
"""
from __future__ import annotations

import copy

import pytest
import torch

from megaprompt.backbones.kernels import KERNEL_CALLS, KeyPadding, choose_kernel, kernels
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig

P = 3
FAMILIES = ("bert", "deberta-v2", "llama", "qwen2")
ATOL = 1e-5
# the fused kernel each family's unpadded P-Tuning v2 batch runs on (DeBERTa: its own disentangled path)
FUSED = {"bert": "sdpa", "llama": "sdpa_causal", "qwen2": "sdpa_causal", "deberta-v2": "sdpa"}


def wrap(tiny, family, prompt_layers="all", seed=0):
    bb = tiny.backbone(family)
    torch.manual_seed(seed)
    cfg = PromptConfig(method="pt2", prompt_len=P, prefix_dropout=0.0, prompt_layers=prompt_layers)
    return build_model(bb, cfg, "cls", 2, head_dropout=0.0).eval()


def batch(tiny, family, padding: str, length=9):
    """Two sequences; ``padding``: none, right (the second loses 3 tokens at the end) or left."""
    ids = tiny.ids(2, length, seed=1)
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, -3:] = 0
        ids[1, -3:] = tiny.pad_id(family)
    elif padding == "left":
        mask[1, :3] = 0
        ids[1, :3] = tiny.pad_id(family)
    return ids, mask


def run(model, ids, mask, names, grad=False, ckpt=False, prefix_mask=None):
    """(last hidden state at real positions, prefix grads or None, kernel calls) under ``kernels(*names)``."""
    model = copy.deepcopy(model)
    if ckpt:
        model.enable_gradient_checkpointing()
        model.train()
    out: dict = {}
    hook = model.backbone.register_forward_hook(lambda m, a, o: out.__setitem__("h", o.last_hidden_state))
    before = KERNEL_CALLS.copy()
    with kernels(*names), torch.set_grad_enabled(grad):
        res = model(ids, mask, labels=torch.tensor([0, 1]), prefix_mask=prefix_mask)
        grads = None
        if grad:
            res["loss"].backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("prompts.")}
    hook.remove()
    calls = {k: KERNEL_CALLS[k] - before.get(k, 0) for k in KERNEL_CALLS if KERNEL_CALLS[k] != before.get(k, 0)}
    real = out["h"] * mask[..., None]          # pad positions are never read (heads pool real tokens)
    return real.detach(), grads, calls


def assert_close(a, b):
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def expected_calls(family, padding, prompt_layers, passes=1):
    """Kernel calls of one forward of the 2-layer model (``passes`` = 2 with a checkpointed recompute)."""
    if family in ("llama", "qwen2"):
        if padding != "none":
            return {"reference": 2 * passes}   # decoders with padding: flex (GPU) or the reference on CPU
        if prompt_layers == "last:1":          # the layer without a prefix runs plain is_causal SDPA
            return {"sdpa": passes, "sdpa_causal": passes}
        return {"sdpa_causal": 2 * passes}
    return {"sdpa": 2 * passes}                # encoders (DeBERTa: its own fused path)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("prompt_layers", ["all", "last:1"])
def test_fused_equals_reference(tiny, family, padding, prompt_layers):
    model = wrap(tiny, family, prompt_layers)
    ids, mask = batch(tiny, family, padding)
    ref, _, ref_calls = run(model, ids, mask, ["reference"])
    new, _, calls = run(model, ids, mask, ["sdpa", "sdpa_causal", "reference"])
    assert_close(new, ref)
    assert ref_calls == {"reference": 2}
    assert calls == expected_calls(family, padding, prompt_layers)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["none", "right"])
def test_fused_grads_equal_reference_under_checkpointing(tiny, family, padding):
    model = wrap(tiny, family)
    ids, mask = batch(tiny, family, padding)
    ref, gref, _ = run(model, ids, mask, ["reference"], grad=True, ckpt=True)
    new, gnew, calls = run(model, ids, mask, ["sdpa", "sdpa_causal", "reference"], grad=True, ckpt=True)
    assert_close(new, ref)
    assert gref.keys() == gnew.keys() and gref
    for k in gref:
        assert gref[k].abs().sum() > 0
        torch.testing.assert_close(gnew[k], gref[k], atol=ATOL, rtol=0)
    assert calls == expected_calls(family, padding, "all", passes=2)     # forward + checkpointed recompute


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_flex_equals_reference_in_inference(tiny, family, padding):
    model = wrap(tiny, family, prompt_layers="last:1")
    ids, mask = batch(tiny, family, padding)
    pmask = torch.tensor([[True, False, True], [True, True, False]])
    ref, _, _ = run(model, ids, mask, ["reference"], prefix_mask=pmask)
    new, _, calls = run(model, ids, mask, ["flex"], prefix_mask=pmask)
    assert_close(new, ref)
    if family != "deberta-v2":
        assert calls == {"flex": 2}


def test_prefix_mask_sdpa_encoder(tiny):
    """Encoders express a per-example prefix mask with a (B, 1, 1, P+L) key mask."""
    model = wrap(tiny, "bert")
    ids, mask = batch(tiny, "bert", "right")
    pmask = torch.tensor([[True, False, True], [False, False, False]])
    ref, _, _ = run(model, ids, mask, ["reference"], prefix_mask=pmask)
    new, _, calls = run(model, ids, mask, ["sdpa", "reference"], prefix_mask=pmask)
    assert_close(new, ref)
    assert calls == {"sdpa": 2}


def q_k(batch=2, heads=4, kv=2, length=5):
    return torch.zeros(batch, heads, length, 8), torch.zeros(batch, kv, length, 8)


@pytest.mark.parametrize("causal,padded,prefix,pmask,want", [
    (False, False, True, False, "sdpa"),
    (False, True, True, True, "sdpa"),
    (True, False, False, False, "sdpa"),          # no prefix: plain is_causal
    (True, False, True, False, "sdpa_causal"),
    (True, False, True, True, "reference"),       # a prefix mask breaks the pure causal pattern
    (True, True, True, False, "reference"),
    (True, True, False, False, "reference"),
])
def test_choose_kernel_cpu_defaults(causal, padded, prefix, pmask, want):
    q, k = q_k()
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool() if padded else None
    kv = (torch.zeros(2, 2, P, 8), torch.zeros(2, 2, P, 8)) if prefix else None
    pm = torch.ones(2, P, dtype=torch.bool) if pmask else None
    with kernels("sdpa", "sdpa_causal", "reference"):
        assert choose_kernel(q, k, kv, pm, KeyPadding(pad, causal, 5), causal) == want
    # weights asked for, or a mask pattern transformers materialised: only the reference
    assert choose_kernel(q, k, kv, pm, KeyPadding(pad, causal, 5), causal, need_weights=True) == "reference"
    assert choose_kernel(q, k, kv, pm, torch.ones(1, 1, 5, 5, dtype=torch.bool), causal) == "reference"


def test_flex_not_chosen_on_cpu_when_grads_are_needed():
    q, k = q_k()
    q.requires_grad_(True)
    with kernels("flex", "reference"):
        assert choose_kernel(q, k, None, None, KeyPadding(None, True, 5), True) == "reference"
        with torch.no_grad():
            assert choose_kernel(q, k, None, None, KeyPadding(None, True, 5), True) == "flex"


def test_bottom_right_alignment_is_required(tiny):
    """is_causal's top-left alignment would hide prefix slots from early queries: the decoder outputs differ."""
    from megaprompt.backbones import kernels as kmod

    q = torch.randn(1, 2, 4, 8)
    k = torch.randn(1, 2, 4, 8)
    v = torch.randn(1, 2, 4, 8)
    pk, pv = torch.randn(1, 2, P, 8), torch.randn(1, 2, P, 8)
    with kernels("reference"):
        ref, _ = kmod.attend(q, k, v, (pk, pv), None, KeyPadding(None, True, 4), True)
    with kernels("sdpa_causal"):
        new, _ = kmod.attend(q, k, v, (pk, pv), None, KeyPadding(None, True, 4), True)
    top_left = torch.nn.functional.scaled_dot_product_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2),
                                                                is_causal=True)
    torch.testing.assert_close(new, ref, atol=ATOL, rtol=0)
    assert (top_left - ref).abs().max() > 1e-3
