"""DeBERTa-v2 prefix attention against a hand-written reference (it has no KV-cache route to compare with).

DeBERTa's disentangled attention (He et al., 2021, Eq. 4) scores a query against a *real* key as
content-to-content + content-to-position + position-to-content, all divided by sqrt(3 d) when both c2p
and p2c are on. A prefix key has no position, so its score is content-only, q . k_p / sqrt(3 d), and the
softmax runs over [prefix ; real] keys together. The reference below recomputes every layer by hand from
that layer's own inputs (captured with a pre-hook) and weights; only the relative-position bias between
real tokens is taken from transformers (``disentangled_attention_bias``, the unpatched class method).
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

from megaprompt.backbones import get_adapter
from megaprompt.model import build_model
from megaprompt.prompts.bank import gather_prefix
from megaprompt.prompts import PromptConfig

P = 3
FAMILY = "deberta-v2"
SIGNATURE = inspect.signature(DisentangledSelfAttention.forward)   # the original module's, not our patch


def reference_layer(module, hidden, attention_mask, relative_pos, rel_embeddings, pk, pv, pmask):
    """(context (B, L, H*d), probs (B, H, L, P+L)) of one DeBERTa attention over [prefix ; real] keys."""
    bsz, length, _ = hidden.shape
    heads = module.num_attention_heads
    d = module.attention_head_size

    def split(x):                                              # (B, L, H*d) -> (B, H, L, d)
        return x.view(bsz, length, heads, d).transpose(1, 2)

    q = split(F.linear(hidden, module.query_proj.weight, module.query_proj.bias))
    k = split(F.linear(hidden, module.key_proj.weight, module.key_proj.bias))
    v = split(F.linear(hidden, module.value_proj.weight, module.value_proj.bias))
    assert module.pos_att_type == ["p2c", "c2p"]              # the tiny config: scale sqrt(3 d)
    scale = math.sqrt(3 * d)
    bias = module.disentangled_attention_bias(q.reshape(bsz * heads, length, d), k.reshape(bsz * heads, length, d),
                                              relative_pos, rel_embeddings, 3).view(bsz, heads, length, length)
    real = q @ k.transpose(-1, -2) / scale + bias             # token pairs: content + relative position
    prefix = q @ pk.transpose(-1, -2) / scale                 # prefix keys: content only, no position
    scores = torch.cat([prefix, real], dim=-1)
    visible = torch.ones(bsz, P, dtype=torch.bool) if pmask is None else pmask
    allowed = torch.cat([visible[:, None, None, :].expand(bsz, 1, length, P),
                         attention_mask.bool().expand(bsz, 1, length, length)], dim=-1)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    ctx = probs @ torch.cat([pv, v], dim=2)                   # (B, H, L, d)
    return ctx.transpose(1, 2).reshape(bsz, length, heads * d), probs


def run_and_capture(model, ids, mask, prefix_mask=None):
    """Forward through the public model; per layer: (bound inputs, context output) of the attention module."""
    modules = get_adapter(FAMILY).attention_modules(model.backbone)
    seen: list[dict] = [{} for _ in modules]
    handles = []
    for i, m in enumerate(modules):
        def pre(mod, args, kwargs, i=i):
            bound = SIGNATURE.bind(mod, *args, **kwargs)
            bound.apply_defaults()
            seen[i]["inputs"] = dict(bound.arguments)
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(lambda mod, a, out, i=i: seen[i].__setitem__("out", out)))
    with torch.no_grad():
        logits = model(ids, mask, prefix_mask=prefix_mask)["logits"]
    for h in handles:
        h.remove()
    return logits, seen


def build(tiny):
    torch.manual_seed(0)
    cfg = PromptConfig(method="pt2", prompt_len=P, prefix_dropout=0.0, init_std=1.0)
    return build_model(tiny.backbone(FAMILY), cfg, "cls", 2, head_dropout=0.0).eval()


def batch(tiny):
    ids = tiny.ids(2, 7, seed=4)
    mask = torch.ones_like(ids)
    ids[1, -2:], mask[1, -2:] = tiny.pad_id(FAMILY), 0
    return ids, mask


def prefix_state(model, batch_size):
    """The prefix a forward of ``batch_size`` rows passes to the layers (eval: no dropout), via the bank."""
    return gather_prefix(model.prompts, [model.routes[t.name] for t in model.tasks], model.spec.num_layers,
                         batch_size, single=0)


def check_layers(model, seen, mask, prefix_mask):
    real = mask.bool()
    kv = prefix_state(model, 2).kv                            # the prefix this forward used (eval: no dropout)
    table = model.prompt.table.detach().view(P, model.spec.num_layers, 2, model.spec.num_kv_heads, -1)
    for layer in range(model.spec.num_layers):                # ... which is the table itself, per row
        torch.testing.assert_close(kv[layer][0], table[:, layer, 0].transpose(0, 1).expand(2, -1, -1, -1))
    for layer, rec in enumerate(seen):
        x = rec["inputs"]
        assert x["query_states"] is None
        ref, _ = reference_layer(x["self"], x["hidden_states"], x["attention_mask"], x["relative_pos"],
                                 x["rel_embeddings"], kv[layer][0], kv[layer][1], prefix_mask)
        ours = rec["out"][0]
        err = (ours[real] - ref[real]).abs().max().item()
        assert err <= 1e-5, f"layer {layer}: max |ours - reference| = {err:.3g}"
        # Non-vacuous: the prefix carries real weight in this layer (the reference without it differs).
        no_prefix, _ = reference_layer(x["self"], x["hidden_states"], x["attention_mask"], x["relative_pos"],
                                       x["rel_embeddings"], kv[layer][0], kv[layer][1],
                                       torch.zeros(2, P, dtype=torch.bool))
        assert (no_prefix[real] - ref[real]).abs().max().item() > 1e-3, f"layer {layer}"


def test_deberta_prefix_matches_hand_written_reference_default_mask(tiny):
    model = build(tiny)
    ids, mask = batch(tiny)
    _, seen = run_and_capture(model, ids, mask)
    check_layers(model, seen, mask, None)


def test_deberta_prefix_matches_hand_written_reference_per_example_mask(tiny):
    model = build(tiny)
    ids, mask = batch(tiny)
    prefix_mask = torch.tensor([[True, True, True], [True, False, True]])
    _, seen = run_and_capture(model, ids, mask, prefix_mask)
    check_layers(model, seen, mask, prefix_mask)


def test_deberta_attention_weights_on_every_prefix_slot(tiny):
    """The weights DeBERTa returns (output_attentions) are the reference's: every real query puts non-zero
    weight on every prefix slot under the default mask, and none on padding."""
    model = build(tiny)
    ids, mask = batch(tiny)
    _, seen = run_and_capture(model, ids, mask)
    state = prefix_state(model, 2)                             # the same prefix, passed for this call
    with torch.no_grad():
        attentions = model.adapter.forward(model.backbone, state, input_ids=ids, attention_mask=mask,
                                           output_attentions=True).attentions
    kv = state.kv
    assert len(attentions) == len(seen) == model.spec.num_layers
    for layer, (w, rec) in enumerate(zip(attentions, seen)):
        x = rec["inputs"]
        _, ref = reference_layer(x["self"], x["hidden_states"], x["attention_mask"], x["relative_pos"],
                                 x["rel_embeddings"], kv[layer][0], kv[layer][1], None)
        assert w.shape == (2, model.spec.num_heads, 7, P + 7)
        for b, n_real in ((0, 7), (1, 5)):
            torch.testing.assert_close(w[b, :, :n_real], ref[b, :, :n_real], rtol=0, atol=1e-6)
            assert (w[b, :, :n_real, :P] > 1e-4).all(), f"layer {layer}: a prefix slot gets no weight"
            assert (w[b, :, :n_real, P + n_real:] == 0).all()
