"""The paper's linear head on a pooled token."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megaprompt.heads import HEAD_KINDS, ClassificationHead, build_head, pool


def test_pool_first_takes_position_zero():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "first"), hidden[:, 0])


@pytest.mark.parametrize("mask,expected", [
    ([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], [2, 4]),    # right padding
    ([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], [4, 4]),    # left padding
    ([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]], [0, 4]),    # single real token at either end
    ([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], [2, 3]),    # both sides padded
])
def test_pool_last_picks_last_real_token(mask, expected):
    hidden = torch.randn(2, 5, 3)
    out = pool(hidden, torch.tensor(mask), "last")
    assert torch.equal(out, hidden[torch.arange(2), torch.tensor(expected)])
    # bool masks work the same
    assert torch.equal(pool(hidden, torch.tensor(mask).bool(), "last"), out)


def test_head_uses_pooling_and_linear_layer():
    torch.manual_seed(0)
    head = ClassificationHead(3, 4, pooling="last", dropout=0.0)
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    labels = torch.tensor([3, 0])
    out = head(hidden, mask, labels=labels)
    expected = head.out(hidden[torch.arange(2), torch.tensor([4, 1])])
    torch.testing.assert_close(out["logits"], expected)
    torch.testing.assert_close(out["loss"], F.cross_entropy(expected, labels))
    assert head(hidden, mask)["loss"] is None


def test_regression_head_uses_mse():
    head = build_head("reg", 3, 1, pooling="first", dropout=0.0)
    assert head.regression and head.out.out_features == 1
    hidden = torch.randn(2, 4, 3)
    labels = torch.tensor([0.5, -1.0])
    out = head(hidden, torch.ones(2, 4), labels=labels)
    expected = hidden[:, 0] @ head.out.weight.T + head.out.bias          # (2, 1): one score per example
    torch.testing.assert_close(out["logits"], expected)
    torch.testing.assert_close(out["loss"], ((expected.squeeze(-1) - labels) ** 2).mean())


def test_dropout_only_in_training():
    """Dropout acts on the pooled vector in training only: with an identity output layer the logits ARE the
    (dropped, 1/(1-p)-scaled) pooled vector."""
    torch.manual_seed(0)
    head = ClassificationHead(16, 16, dropout=0.5)
    with torch.no_grad():
        head.out.weight.copy_(torch.eye(16))
        head.out.bias.zero_()
    hidden, mask = torch.randn(64, 3, 16), torch.ones(64, 3)
    pooled = hidden[:, 0]
    head.eval()
    torch.testing.assert_close(head(hidden, mask)["logits"], pooled, rtol=0, atol=0)
    head.train()
    logits = head(hidden, mask)["logits"]
    dropped = logits == 0
    assert 0.4 < dropped.float().mean().item() < 0.6
    torch.testing.assert_close(logits[~dropped], 2 * pooled[~dropped])


def test_invalid_pooling_and_kind():
    with pytest.raises(ValueError, match="pooling='mean'"):
        ClassificationHead(3, 2, pooling="mean")
    with pytest.raises(ValueError, match="head kind 'crf'") as err:
        build_head("crf", 3, 2)
    for kind in HEAD_KINDS:
        assert kind in str(err.value)
    cls = build_head("cls", 3, 5, pooling="last")
    assert cls.out.out_features == 5 and cls.pooling == "last" and not cls.regression
