"""P-Tuning v2 invariants, proven for every supported backbone family (see tests/conftest.py).

a. gradient checkpointing: same prefix gradients with and without it, and it really recomputes;
b. real tokens keep positions 0..L-1: prefix fully masked == bare backbone;
c. padding masks keep working, decoders stay causal, every real token sees every prefix slot;
d. GQA: prefixes are stored per kv head;
plus the ``prompt_layers`` subset and per-example ``prefix_mask``.
"""
from __future__ import annotations

import copy

import pytest
import torch

from megaprompt.backbones import get_adapter
from megaprompt.backbones.attention import layer_prefix
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig

P = 3


def wrap(tiny, family, method="pt2", **prompt_kw):
    """(prompted model in eval mode, untouched deepcopy of the bare backbone taken before wrapping)."""
    bb = tiny.backbone(family)
    bare = copy.deepcopy(bb)
    cfg = PromptConfig(method=method, prompt_len=P, prefix_dropout=0.0, **prompt_kw)
    model = build_model(bb, cfg, "cls", 2, head_dropout=0.0)
    return model.eval(), bare


def padded_batch(tiny, family, length=7, n_pad=2, seed=0):
    """Two sequences; the second is right-padded with ``n_pad`` pad tokens."""
    ids = tiny.ids(2, length, seed)
    mask = torch.ones_like(ids)
    mask[1, -n_pad:] = 0
    ids[1, -n_pad:] = tiny.pad_id(family)
    return ids, mask


def hidden(model, capture_hidden, ids, mask, **kw) -> torch.Tensor:
    cap = capture_hidden(model.backbone)
    with torch.no_grad():
        model(ids, mask, **kw)
    cap.remove()
    return cap.last


def attn_modules(model_or_backbone):
    bb = getattr(model_or_backbone, "backbone", model_or_backbone)
    return get_adapter(bb.config.model_type).attention_modules(bb)


# ---- a. gradient checkpointing ---------------------------------------------------------------------------
@pytest.mark.parametrize("reparam,every", [("none", 1), ("mlp", 1), ("none", 2)])
def test_gradient_checkpointing_same_prefix_grads_and_recomputes(tiny, family, reparam, every):
    model, _ = wrap(tiny, family, reparam=reparam, mlp_hidden=16)
    model.train()  # checkpointing is only active in training mode (all dropouts are 0)
    ids, mask = padded_batch(tiny, family)
    labels = torch.tensor([0, 1])
    n_layers = model.spec.num_layers
    calls = [0] * n_layers
    saw_prefix: list[bool] = []

    def counter(i):
        def hook(module, args, kwargs):
            calls[i] += 1
            saw_prefix.append(layer_prefix(module, kwargs) is not None)   # the prefix this call really gets
        return hook

    for i, attn in enumerate(attn_modules(model)):
        attn.register_forward_pre_hook(counter(i), with_kwargs=True)

    def step():
        model.zero_grad(set_to_none=True)
        calls[:] = [0] * n_layers
        saw_prefix.clear()
        model(ids, mask, labels=labels)["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("prompts.")}
        return grads, list(calls), list(saw_prefix)

    g_off, calls_off, saw_off = step()
    model.enable_gradient_checkpointing(every_n_layers=every)
    assert getattr(model.backbone, "is_activation_checkpointing", None) or model.backbone.is_gradient_checkpointing
    # non-reentrant checkpointing needs no grad-requiring embeddings: transformers' hook must be gone
    emb_out = []
    h = model.backbone.get_input_embeddings().register_forward_hook(lambda m, a, o: emb_out.append(o))
    g_on, calls_on, saw_on = step()
    h.remove()
    assert emb_out and not emb_out[0].requires_grad

    # Non-vacuous: without checkpointing each attention runs once per step; with it, once more in backward
    # (the recompute) for every checkpointed layer (every ``every``-th from 0), and the recompute still sees
    # the prefix.
    assert calls_off == [1] * n_layers
    assert calls_on == [2 if i % every == 0 else 1 for i in range(n_layers)]
    assert all(saw_off) and all(saw_on) and len(saw_on) == sum(calls_on)

    assert set(g_on) == set(g_off) and g_off
    for name in g_off:
        assert g_off[name].abs().sum() > 0, name
        torch.testing.assert_close(g_on[name], g_off[name], rtol=1e-5, atol=1e-6, msg=name)
    if reparam == "none":
        # every layer's key and value prefix gets a gradient
        per = g_off["prompts.shared.table"].view(P, n_layers, 2, model.spec.num_kv_heads, model.spec.head_dim)
        assert (per.abs().sum(dim=(0, 3, 4)) > 0).all()


# ---- b. real tokens keep positions 0..L-1 ---------------------------------------------------------------
def test_fully_masked_prefix_equals_bare_backbone(tiny, family, capture_hidden):
    model, bare = wrap(tiny, family)
    ids, mask = padded_batch(tiny, family)
    real = mask.bool()
    with torch.no_grad():
        ref = bare(input_ids=ids, attention_mask=mask).last_hidden_state
    masked = hidden(model, capture_hidden, ids, mask, prefix_mask=torch.zeros(2, P, dtype=torch.bool))
    assert masked.shape == ref.shape
    assert (masked[real] - ref[real]).abs().max().item() <= 1e-5

    # Non-vacuous: with the prefix visible the same model gives different outputs for every sequence.
    visible = hidden(model, capture_hidden, ids, mask)
    for b in range(2):
        assert (visible[b][real[b]] - ref[b][real[b]]).abs().max().item() > 1e-3


# ---- c. padding, causality, prefix visibility ----------------------------------------------------------
def test_padding_gives_same_real_token_outputs(tiny, family, capture_hidden):
    model, _ = wrap(tiny, family)
    ids, _ = padded_batch(tiny, family, n_pad=3)
    seq = ids[1:2, :-3]  # the second row without its padding
    alone = hidden(model, capture_hidden, seq, torch.ones_like(seq))
    ids, mask = padded_batch(tiny, family, n_pad=3)
    padded = hidden(model, capture_hidden, ids, mask)
    assert (padded[1, :-3] - alone[0]).abs().max().item() <= 1e-5
    if not tiny.is_decoder(family):  # (right pads come after every real token: causal decoders never see them)
        # Non-vacuous: ignoring the padding mask (attending to pads) changes the real tokens' outputs.
        unmasked = hidden(model, capture_hidden, ids, torch.ones_like(mask))
        assert (unmasked[1, :-3] - alone[0]).abs().max().item() > 1e-4


def test_left_padding_gives_same_real_token_outputs(tiny, decoder_family, capture_hidden):
    model, _ = wrap(tiny, decoder_family)
    seq = tiny.ids(1, 5, seed=3)
    alone = hidden(model, capture_hidden, seq, torch.ones_like(seq))
    ids = torch.cat([torch.full((1, 3), tiny.pad_id(decoder_family)), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
    left = hidden(model, capture_hidden, ids, mask)
    assert torch.isfinite(left[0, 3:]).all()
    assert (left[0, 3:] - alone[0]).abs().max().item() <= 1e-5
    unmasked = hidden(model, capture_hidden, ids, torch.ones_like(mask))  # non-vacuous: pads would be seen
    assert (unmasked[0, 3:] - alone[0]).abs().max().item() > 1e-4


def test_decoders_keep_causal_order_with_prefix(tiny, decoder_family, capture_hidden):
    model, _ = wrap(tiny, decoder_family)
    ids = tiny.ids(1, 6, seed=1)
    mask = torch.ones_like(ids)
    changed = ids.clone()
    changed[0, -1] = 5 if ids[0, -1] != 5 else 6
    a = hidden(model, capture_hidden, ids, mask)
    b = hidden(model, capture_hidden, changed, mask)
    assert (a[0, :-1] - b[0, :-1]).abs().max().item() <= 1e-6
    assert (a[0, -1] - b[0, -1]).abs().max().item() > 1e-4  # the change itself is visible


def test_encoders_are_bidirectional_with_prefix(tiny, encoder_family, capture_hidden):
    model, _ = wrap(tiny, encoder_family)
    ids = tiny.ids(1, 6, seed=1)
    mask = torch.ones_like(ids)
    changed = ids.clone()
    changed[0, -1] = 5 if ids[0, -1] != 5 else 6
    a = hidden(model, capture_hidden, ids, mask)
    b = hidden(model, capture_hidden, changed, mask)
    assert (a[0, 0] - b[0, 0]).abs().max().item() > 1e-4


def test_every_real_token_sees_every_prefix_slot(tiny, family, capture_hidden):
    """Perturbing any single prefix slot's key or value, in any layer, changes the output at real position 0
    (the first token: in a causal decoder it sees nothing else) and at the last real token - unless that slot
    is masked out by ``prefix_mask`` for that sequence only."""
    model, _ = wrap(tiny, family)
    ids, mask = padded_batch(tiny, family)
    # rows 0, 1: every slot visible; row 2 = row 1 with the slot under test masked out
    ids, mask = torch.cat([ids, ids[1:]]), torch.cat([mask, mask[1:]])
    spec = model.spec
    table = model.prompt.table.data.view(P, spec.num_layers, 2, spec.num_kv_heads, spec.head_dim)
    for slot in range(P):
        pm = torch.ones(3, P, dtype=torch.bool)
        pm[2, slot] = False
        base = hidden(model, capture_hidden, ids, mask, prefix_mask=pm)
        for layer in range(spec.num_layers):
            for kv in (0, 1):
                orig = table[slot, layer, kv].clone()
                table[slot, layer, kv] += torch.linspace(-2.0, 2.0, orig.numel()).view_as(orig)
                out = hidden(model, capture_hidden, ids, mask, prefix_mask=pm)
                table[slot, layer, kv] = orig
                where = f"layer {layer} slot {slot} {'value' if kv else 'key'}"
                for b, last in ((0, 6), (1, 4)):
                    assert (out[b, 0] - base[b, 0]).abs().max().item() > 1e-5, where
                    assert (out[b, last] - base[b, last]).abs().max().item() > 1e-5, where
                # the sequence that masks this slot out is unaffected
                assert (out[2, :5] - base[2, :5]).abs().max().item() <= 1e-6, where


# ---- d. GQA: prefixes per kv head ----------------------------------------------------------------------
@pytest.mark.parametrize("reparam", ["none", "mlp"])
def test_prefix_shapes_use_kv_heads(tiny, family, reparam, capture_hidden, capture_prefix):
    model, _ = wrap(tiny, family, reparam=reparam, mlp_hidden=16)
    cfg = model.backbone.config
    layers = cfg.num_hidden_layers
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert (model.spec.num_kv_heads, model.spec.head_dim, model.spec.num_layers) == (kv_heads, head_dim, layers)
    if tiny.is_decoder(family):
        assert kv_heads < cfg.num_attention_heads  # GQA really exercised
    width = P * layers * 2 * kv_heads * head_dim
    if reparam == "none":
        assert model.prompt.table.shape == (P, layers * 2 * kv_heads * head_dim)
        assert model.prompt.table.numel() == width
    else:
        assert model.prompt.mlp[-1].out_features == layers * 2 * kv_heads * head_dim
        assert model.prompt.flat().numel() == width
    ids, mask = padded_batch(tiny, family)
    cap = capture_prefix(model.backbone)
    hidden(model, capture_hidden, ids, mask)
    kv = cap.last()
    assert len(kv) == layers and len(cap.calls) == layers
    for k, v, pmask in kv:
        assert k.shape == v.shape == (2, kv_heads, P, head_dim)
        assert pmask is None                               # one task, one length: every slot visible


# ---- prompt_layers subset ------------------------------------------------------------------------------
def test_prompt_layers_last_1_only_changes_last_layer(tiny, family, capture_hidden):
    model, bare = wrap(tiny, family, prompt_layers="last:1")
    spec = model.spec
    assert model.prompt.layers == [1]
    assert model.prompt().shape == (1, 2, spec.num_kv_heads, P, spec.head_dim)
    assert model.prompt.table.numel() == P * 1 * 2 * spec.num_kv_heads * spec.head_dim

    ids, mask = padded_batch(tiny, family)
    real = mask.bool()
    outs = {}
    for tag, m in (("model", model.backbone), ("bare", bare)):
        outs[tag] = []
        for attn in attn_modules(m):
            attn.register_forward_hook(lambda mod, a, out, store=outs[tag]: store.append(out[0].detach()))
    with torch.no_grad():
        model(ids, mask)
        bare(input_ids=ids, attention_mask=mask)
    (m0, m1), (b0, b1) = outs["model"], outs["bare"]
    assert (m0[real] - b0[real]).abs().max().item() <= 1e-5       # layer 0: no prefix, unchanged
    assert (m1[real] - b1[real]).abs().max().item() > 1e-3        # layer 1: prompted


def test_prompt_layers_list_selects_layers(tiny, family, capture_prefix):
    model, _ = wrap(tiny, family, prompt_layers="0")
    assert model.prompt.layers == [0]
    cap = capture_prefix(model.backbone)
    ids = tiny.ids(1, 4)
    with torch.no_grad():
        model(ids, torch.ones_like(ids))
    kv = cap.last()
    assert kv[0] is not None and kv[1] is None
    with pytest.raises(ValueError, match="out of range"):
        wrap(tiny, family, prompt_layers="2")


# ---- eager inner attention (a backbone loaded with attn_implementation="eager") -------------------------
# DeBERTa-v2 has a single (replaced) attention forward, no eager/sdpa choice.
@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "electra", "llama", "mistral", "qwen2",
                                    "qwen3", "glm4"])
def test_eager_backbone_matches_sdpa_and_returns_prefix_weights(tiny, family, capture_hidden):
    outs, probs = {}, {}
    for impl in ("sdpa", "eager"):
        bb = tiny.backbone(family, attn_implementation=impl)
        torch.manual_seed(0)
        model = build_model(bb, PromptConfig(method="pt2", prompt_len=P, prefix_dropout=0.0), "cls", 2,
                            head_dropout=0.0).eval()
        assert all(m._mp_eager == (impl == "eager") for m in attn_modules(model))
        ids, mask = padded_batch(tiny, family)
        outs[impl] = hidden(model, capture_hidden, ids, mask)
        probs[impl] = []
        for attn in attn_modules(model):
            attn.register_forward_hook(lambda m, a, out, store=probs[impl]: store.append(out[1]))
        hidden(model, capture_hidden, ids, mask)            # the default prefix mask (None)
    real = mask.bool()
    assert (outs["eager"][real] - outs["sdpa"][real]).abs().max().item() <= 1e-5
    assert probs["sdpa"] == [None] * len(probs["eager"])
    assert len(probs["eager"]) == tiny.config(family).num_hidden_layers
    for layer, w in enumerate(probs["eager"]):               # (B, heads, L, P + L), rows sum to 1
        assert w.shape == (2, tiny.config(family).num_attention_heads, 7, P + 7)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        # every query puts weight on every prefix slot (in every layer), none on the padding of sequence 1
        assert (w[..., :P] > 1e-4).all(), f"layer {layer}: a prefix slot gets no weight by default"
        assert (w[1, :, :, P + 5:] == 0).all()


def test_default_prefix_mask_shows_every_slot(tiny, family, capture_hidden):
    """``prefix_mask=None`` (what training and predict use) is exactly "every slot visible"; the explicit mask
    path is checked against independent references (KV cache, DeBERTa's hand-written attention)."""
    model, _ = wrap(tiny, family)
    ids, mask = padded_batch(tiny, family)
    real = mask.bool()
    default = hidden(model, capture_hidden, ids, mask)
    visible = hidden(model, capture_hidden, ids, mask, prefix_mask=torch.ones(2, P, dtype=torch.bool))
    assert (default[real] - visible[real]).abs().max().item() <= 1e-6
    for slot in range(P):                                   # non-vacuous: hiding any one slot shows
        one_hidden = torch.ones(2, P, dtype=torch.bool)
        one_hidden[:, slot] = False
        out = hidden(model, capture_hidden, ids, mask, prefix_mask=one_hidden)
        assert (out[real] - default[real]).abs().max().item() > 1e-5, f"slot {slot}"
