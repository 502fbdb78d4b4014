"""Lester et al. prompt tuning: P trainable input embeddings prepended to the real tokens' embeddings.

Reference for the logits: the untouched bare backbone fed ``[prompt ; word embeddings]`` (prompt positions
attended unless masked, token type 0), and the head's linear layer applied by hand to the pooled *real*
token (the first real token for encoders, the last real one for decoders), never to a prompt position.
"""
from __future__ import annotations

import copy

import pytest
import torch

import megaprompt.prompts.lester as lester_module
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig

P = 3


def wrap(tiny, family, prefix_dropout=0.0, **kw):
    """(model in eval mode with O(1) prompt vectors so every slot matters, untouched bare backbone)."""
    bb = tiny.backbone(family)
    bare = copy.deepcopy(bb)
    cfg = PromptConfig(method="lester", prompt_len=P, prefix_dropout=prefix_dropout, **kw)
    model = build_model(bb, cfg, "cls", 2, head_dropout=0.0).eval()
    if not kw:
        torch.manual_seed(1)
        with torch.no_grad():
            model.prompt.embedding.normal_(0.0, 1.0)
    return model, bare


def right_padded(tiny, family, length=6, n_pad=2, seed=2):
    ids = tiny.ids(2, length, seed=seed)
    mask = torch.ones_like(ids)
    ids[1, -n_pad:], mask[1, -n_pad:] = tiny.pad_id(family), 0
    return ids, mask


def reference_logits(tiny, family, model, bare, ids, mask, prompt=None, token_type_ids=None, prompt_mask=None):
    """Row by row: the bare backbone on [prompt ; embeddings], then the head on the pooled real token."""
    W, b = model.head.out.weight, model.head.out.bias
    rows = []
    for r in range(ids.shape[0]):
        p = (model.prompt.embedding if prompt is None else prompt[r]).detach()     # (P, E)
        pm = torch.ones(P, dtype=torch.long) if prompt_mask is None else prompt_mask[r].long()
        if tiny.is_decoder(family) and prompt_mask is not None:
            # decoders number attended positions only (RoPE): a hidden slot is the same as an absent one
            p, pm = p[pm.bool()], pm[pm.bool()]
        n = p.shape[0]
        real_len = int(mask[r].sum())
        embeds = bare.get_input_embeddings()(ids[r:r + 1])
        kw = {"inputs_embeds": torch.cat([p[None], embeds], dim=1),
              "attention_mask": torch.cat([pm[None], mask[r:r + 1]], dim=1)}
        if token_type_ids is not None:                       # prompt positions are segment A (type 0)
            kw["token_type_ids"] = torch.cat([torch.zeros(1, n, dtype=torch.long), token_type_ids[r:r + 1]], 1)
        with torch.no_grad():
            hidden = bare(**kw).last_hidden_state[0, n:]     # real tokens only
        pooled = hidden[real_len - 1] if tiny.is_decoder(family) else hidden[0]
        rows.append(pooled @ W.T + b)
    return torch.stack(rows).detach()


def test_lester_logits_match_reference(tiny, family, capture_hidden):
    # prefix_dropout > 0: eval mode must not drop prompt entries
    model, bare = wrap(tiny, family, prefix_dropout=0.5)
    ids, mask = right_padded(tiny, family)
    cap = capture_hidden(model.backbone)
    with torch.no_grad():
        out = model(ids, mask)["logits"]
    assert cap.last.shape == (2, P + 6, model.spec.hidden_size)   # the backbone saw P extra positions
    assert not any(hasattr(m, "_mp_layer") for m in model.adapter.attention_modules(model.backbone))  # no prefix
    ref = reference_logits(tiny, family, model, bare, ids, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # Non-vacuous: the prompt changes the logits (the head on the bare backbone's own outputs differs)
    with torch.no_grad():
        plain = bare(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = plain[[0, 1], [5, 3]] if tiny.is_decoder(family) else plain[:, 0]
    assert (pooled @ model.head.out.weight.T + model.head.out.bias - out).abs().max().item() > 1e-3


@pytest.mark.parametrize("fam", ["bert", "electra"])             # the families with segment embeddings
def test_lester_token_types_are_zero_on_prompt_positions(tiny, fam):
    model, bare = wrap(tiny, fam)
    ids, mask = right_padded(tiny, fam)
    tt = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    with torch.no_grad():
        out = model(ids, mask, token_type_ids=tt)["logits"]
    torch.testing.assert_close(out, reference_logits(tiny, fam, model, bare, ids, mask, token_type_ids=tt),
                               rtol=0, atol=1e-5)
    # Non-vacuous: the token types matter here - all zeros gives other logits
    zeros = reference_logits(tiny, fam, model, bare, ids, mask, token_type_ids=torch.zeros_like(tt))
    assert (zeros - out).abs().max().item() > 1e-4


def test_lester_prompt_mask_hides_slots(tiny, family):
    model, bare = wrap(tiny, family)
    ids, mask = right_padded(tiny, family)
    pm = torch.tensor([[True, False, True], [False, True, True]])
    with torch.no_grad():
        out = model(ids, mask, prefix_mask=pm)["logits"]
        visible = model(ids, mask)["logits"]
    torch.testing.assert_close(out, reference_logits(tiny, family, model, bare, ids, mask, prompt_mask=pm),
                               rtol=0, atol=1e-5)
    assert ((out - visible).abs().amax(-1) > 1e-4).all()         # every row: the hidden slot mattered


def test_lester_dropout_in_training_drops_prompt_entries_per_example(tiny):
    model, bare = wrap(tiny, "bert", prefix_dropout=0.5)
    model.train()                                              # the tiny backbone and head have no dropout
    used = []                                                  # the prompt rows the backbone received
    model.backbone.register_forward_pre_hook(lambda m, a, kw: used.append(kw["inputs_embeds"][:, :P].detach()),
                                             with_kwargs=True)
    ids, mask = right_padded(tiny, "bert")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(ids, mask)["logits"]
    prompt = used[0]                                           # (B, P, E) what the backbone received
    emb = model.prompt.embedding.detach()
    dropped = prompt == 0
    assert 0.3 < dropped.float().mean().item() < 0.7
    torch.testing.assert_close(prompt[~dropped], (2 * emb.expand_as(prompt))[~dropped])   # inverted scaling
    assert not torch.equal(dropped[0], dropped[1])             # each example draws its own mask
    torch.testing.assert_close(out, reference_logits(tiny, "bert", model, bare, ids, mask, prompt=prompt),
                               rtol=0, atol=1e-5)


def test_lester_prompt_gets_gradient_and_is_the_only_trainable_prompt(tiny, family):
    model, _ = wrap(tiny, family)
    model.train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {"prompts.shared.embedding", "heads.task.out.weight", "heads.task.out.bias"}
    ids = tiny.ids(2, 5)
    model(ids, torch.ones_like(ids), labels=torch.tensor([0, 1]))["loss"].backward()
    assert (model.prompt.embedding.grad.abs().sum(-1) > 0).all()       # every prompt vector
    assert all(p.grad is None for n, p in model.backbone.named_parameters())


@pytest.mark.parametrize("fam", ["bert", "electra"])
def test_lester_position_limit_is_max_seq_len_plus_prompt_len(tiny, fam):
    """Absolute-position encoders: real tokens start at position P, so L + P must fit the position table."""
    assert "max_seq_len + prompt_len" in lester_module.__doc__
    model, _ = wrap(tiny, fam)
    limit = model.spec.max_positions
    ok = tiny.ids(1, limit - P)
    with torch.no_grad():
        model(ok, torch.ones_like(ok))
        too_long = tiny.ids(1, limit - P + 1)
        with pytest.raises((RuntimeError, IndexError)):
            model(too_long, torch.ones_like(too_long))
        # the same length runs fine without the input prompt: the limit comes from the prompt positions
        plain = build_model(tiny.backbone(fam), PromptConfig(method="head"), "cls", 2).eval()
        plain(too_long, torch.ones_like(too_long))


def test_lester_prompt_init_scale(tiny):
    model, _ = wrap(tiny, "bert", init_std=1.0)
    assert model.prompt.embedding.std().item() < 0.05       # input-embedding scale, not N(0, 1)
    zero, _ = wrap(tiny, "bert", init="zero")
    assert zero.prompt.embedding.abs().sum() == 0
