"""Lester et al. prompt tuning: P trainable input embeddings prepended to the real tokens' embeddings."""
from __future__ import annotations

import copy

import pytest
import torch

import megaprompt.prompts.lester as lester_module
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig

P = 3


def wrap(tiny, family, **kw):
    bb = tiny.backbone(family)
    bare = copy.deepcopy(bb)
    cfg = PromptConfig(method="lester", prompt_len=P, prefix_dropout=0.0, **kw)
    return build_model(bb, cfg, "cls", 2, head_dropout=0.0).eval(), bare


def test_lester_prepends_prompt_positions(tiny, family, capture_hidden):
    model, bare = wrap(tiny, family)
    ids = tiny.ids(2, 6, seed=2)
    mask = torch.ones_like(ids)
    ids[1, -2:], mask[1, -2:] = tiny.pad_id(family), 0
    cap = capture_hidden(model.backbone)
    with torch.no_grad():
        out = model(ids, mask)
    assert cap.last.shape == (2, P + 6, model.spec.hidden_size)   # the backbone saw P extra positions
    assert out["logits"].shape == (2, 2)
    assert model.holder is None                                    # no prefix attention involved

    # Reference: the bare backbone fed [prompt ; word embeddings] with the prompt attended; the model hands the
    # head only the real tokens, i.e. backbone positions P..P+L-1.
    with torch.no_grad():
        embeds = bare.get_input_embeddings()(ids)
        full = torch.cat([model.prompt.embedding.expand(2, -1, -1), embeds], dim=1)
        am = torch.cat([torch.ones(2, P, dtype=mask.dtype), mask], dim=1)
        ref = bare(inputs_embeds=full, attention_mask=am).last_hidden_state
        plain = bare(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (cap.last[:, P:][real] - ref[:, P:][real]).abs().max().item() <= 1e-5
    assert (cap.last[:, P:][real] - plain[real]).abs().max().item() > 1e-3   # the prompt matters


def test_lester_prompt_gets_gradient_and_is_the_only_trainable_prompt(tiny, family):
    model, _ = wrap(tiny, family)
    model.train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {"prompt.embedding", "head.out.weight", "head.out.bias"}
    ids = tiny.ids(2, 5)
    model(ids, torch.ones_like(ids), labels=torch.tensor([0, 1]))["loss"].backward()
    assert model.prompt.embedding.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.backbone.named_parameters())


def test_lester_token_type_ids_are_extended(tiny):
    model, _ = wrap(tiny, "bert")
    ids = tiny.ids(1, 5)
    tt = torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids), token_type_ids=tt)["logits"]
        b = model(ids, torch.ones_like(ids))["logits"]
    assert not torch.allclose(a, b)  # segment ids reach the real tokens (after the P prompt positions)


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
