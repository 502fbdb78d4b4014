"""PromptedModel: which parameters train per method, gradient flow, pooling choice, forward plumbing."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from megaprompt.model import PromptedModel, build_model
from megaprompt.prompts import PromptConfig

HEAD = {"heads.task.out.weight", "heads.task.out.bias"}
EXPECTED_TRAINABLE = {
    ("pt2", "none"): {"prompts.shared.table"} | HEAD,
    ("pt2", "mlp"): {"prompts.shared.embedding", "prompts.shared.mlp.0.weight", "prompts.shared.mlp.0.bias",
                     "prompts.shared.mlp.2.weight", "prompts.shared.mlp.2.bias"} | HEAD,
    ("lester", "none"): {"prompts.shared.embedding"} | HEAD,
    ("head", "none"): HEAD,
}


def build(tiny, family, method, reparam="none", **kw) -> PromptedModel:
    cfg = PromptConfig(method=method, prompt_len=3, reparam=reparam, mlp_hidden=8, prefix_dropout=0.0, **kw)
    return build_model(tiny.backbone(family), cfg, "cls", 3, head_dropout=0.0)


@pytest.mark.parametrize("method,reparam", sorted(EXPECTED_TRAINABLE))
def test_exactly_prompt_and_head_train(tiny, family, method, reparam):
    model = build(tiny, family, method, reparam)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == EXPECTED_TRAINABLE[(method, reparam)]
    assert not any(p.requires_grad for p in model.backbone.parameters())

    # gradients reach exactly those parameters
    model.train()
    ids = tiny.ids(2, 5)
    model(ids, torch.ones_like(ids), labels=torch.tensor([0, 2]))["loss"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)


def test_ft_trains_everything(tiny, family):
    model = build(tiny, family, "ft")
    names = {n for n, _ in model.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names
    assert HEAD <= names and any(n.startswith("backbone.") for n in names)
    assert model.prompt is None and len(model.prompts) == 0
    assert not any(hasattr(m, "_mp_layer") for m in model.adapter.attention_modules(model.backbone))


def test_configure_trainable_resets_frozen_state(tiny):
    model = build(tiny, "bert", "pt2")
    model.requires_grad_(True)                  # e.g. a caller unfroze everything
    model.configure_trainable()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == EXPECTED_TRAINABLE[("pt2", "none")]


def test_pooling_follows_architecture(tiny, family):
    model = build(tiny, family, "pt2")
    assert model.head.pooling == ("last" if tiny.is_decoder(family) else "first")


def test_classification_loss_is_cross_entropy_of_logits(tiny, family):
    model = build(tiny, family, "pt2").eval()
    ids = tiny.ids(3, 5)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), labels=labels)
    assert out["logits"].shape == (3, 3)
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"], labels))
    assert model(ids, torch.ones_like(ids))["loss"] is None


def test_pooled_token_is_the_last_real_token_for_decoders(tiny, decoder_family):
    """Right padding: the logits of a padded sequence equal those of the same sequence alone."""
    model = build(tiny, decoder_family, "pt2").eval()
    seq = tiny.ids(1, 4, seed=5)
    ids = torch.cat([seq, torch.full((1, 2), tiny.pad_id(decoder_family))], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        alone = model(seq, torch.ones_like(seq))["logits"]
        padded = model(ids, mask)["logits"]
        left = model(torch.cat([ids[:, 4:], seq], 1), torch.tensor([[0, 0, 1, 1, 1, 1]]))["logits"]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-5)


def test_prefix_is_passed_per_call_and_no_state_is_left_on_the_model(tiny, capture_prefix):
    """The layers read the prefix of *this* call (its mask too); nothing of it stays on the model or backbone
    (the old mailbox would let a second model on the same backbone take over the first one's attention)."""
    model = build(tiny, "llama", "pt2").eval()
    before = set(vars(model)) | set(vars(model.backbone))
    cap = capture_prefix(model.backbone)
    ids = tiny.ids(2, 4)
    with torch.no_grad():
        model(ids, torch.ones_like(ids))
    first = cap.last()
    assert len(first) == 2 and all(k.shape[0] == 2 and m is None for k, _, m in first)
    pm = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        model(ids, torch.ones_like(ids), prefix_mask=pm)
    assert all(torch.equal(m, pm) for _, _, m in cap.last())
    assert set(vars(model)) | set(vars(model.backbone)) == before
    from megaprompt.backbones.attention import _CALL_PREFIX
    assert _CALL_PREFIX.get() is None


def test_prefix_dropout_is_active_in_training_only(tiny, capture_prefix):
    """Eval: the prefix the layers read is the table itself. Training: entries are dropped per example and the
    survivors scaled by 1/(1-p), and that dropped prefix is what the layers read (one draw per forward)."""
    model = build_model(tiny.backbone("bert"), PromptConfig(method="pt2", prompt_len=3, prefix_dropout=0.5),
                        "cls", 2, head_dropout=0.0)
    ids = tiny.ids(2, 5)
    mask = torch.ones_like(ids)
    spec = model.spec
    table = model.prompt.table.detach().view(3, spec.num_layers, 2, spec.num_kv_heads, spec.head_dim)
    cap = capture_prefix(model.backbone)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        torch.manual_seed(0)
        with torch.no_grad():
            model(ids, mask)
        key = cap.last()[0][0]                     # layer 0's key prefix, as this forward gave it to the layers
        clean = table[:, 0, 0].transpose(0, 1).expand_as(key)                # (B, kv heads, P, head_dim)
        if mode == "eval":
            torch.testing.assert_close(key, clean, rtol=0, atol=0)
        else:
            dropped = key == 0
            assert 0.3 < dropped.float().mean().item() < 0.7
            torch.testing.assert_close(key[~dropped], 2 * clean[~dropped])
            assert not torch.equal(dropped[0], dropped[1])               # per example


def test_multiple_choice_logits_score_each_choice_alone(tiny, capture_hidden):
    """(B, C, L) inputs: logits[b, c] is the head's score of choice c of example b run as its own sequence."""
    model = build_model(tiny.backbone("bert"), PromptConfig(method="pt2", prompt_len=3, prefix_dropout=0.0),
                        "mc", 1, head_dropout=0.0).eval()
    B, C, L = 2, 3, 5
    ids = tiny.ids(B * C, L, seed=3).view(B, C, L)
    mask = torch.ones(B, C, L, dtype=torch.long)
    mask[1, 2, -2:] = 0                                                  # one padded choice
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(ids, mask, labels=labels)
    cap = capture_hidden(model.backbone)
    ref = torch.empty(B, C)
    for b in range(B):
        for c in range(C):
            n = int(mask[b, c].sum())
            with torch.no_grad():
                model(ids[b, c, :n].view(1, 1, n), mask[b, c, :n].view(1, 1, n))   # this choice alone, unpadded
            ref[b, c] = (cap.last[0, 0] @ model.head.out.weight[0] + model.head.out.bias[0]).item()
    assert out["logits"].shape == (B, C)
    torch.testing.assert_close(out["logits"], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["loss"], F.cross_entropy(ref, labels), rtol=0, atol=1e-5)


def test_wrapping_does_not_change_backbone_weights(tiny, family):
    bb = tiny.backbone(family)
    before = copy.deepcopy(bb.state_dict())
    model = build_model(bb, PromptConfig(method="pt2", prompt_len=2), "cls", 2)
    after = model.backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
