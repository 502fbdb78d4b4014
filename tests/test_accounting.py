"""Parameter accounting: ZeRO-3 ``ds_numel``, tied weights, meta-device models."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoModel

from megaprompt.accounting import ParamCount, count_parameters, numel
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig


def test_counts_of_a_prompted_model(tiny, family):
    model = build_model(tiny.backbone(family), PromptConfig(method="pt2", prompt_len=4), "cls", 3)
    spec = model.spec
    count = count_parameters(model)
    prompt = 4 * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim
    head = spec.hidden_size * 3 + 3
    assert count.trainable == prompt + head
    assert count.frozen == sum(p.numel() for p in model.backbone.parameters())
    assert count.total == count.trainable + count.frozen
    assert abs(count.ratio - count.trainable / count.total) < 1e-12
    d = count.to_dict()
    assert d["trainable"] == count.trainable and d["total"] == count.total and d["ratio"] == count.ratio


def test_zero3_partitioned_params_count_via_ds_numel():
    module = nn.Module()
    module.a = nn.Parameter(torch.empty(0))        # ZeRO-3 partition: numel() is 0 on this rank
    module.a.ds_numel = 1000
    module.b = nn.Parameter(torch.empty(0), requires_grad=False)
    module.b.ds_numel = 250
    module.c = nn.Parameter(torch.zeros(3, 4))       # not partitioned
    assert numel(module.a) == 1000 and numel(module.c) == 12
    assert count_parameters(module) == ParamCount(trainable=1012, frozen=250)


def test_ds_numel_zero_or_none_falls_back_to_numel():
    p = nn.Parameter(torch.zeros(5))
    p.ds_numel = None
    assert numel(p) == 5
    p.ds_numel = 0
    assert numel(p) == 5


def test_tied_weights_count_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10)
            self.out.weight = self.emb.weight

    m = Tied()
    assert count_parameters(m).total == 10 * 4 + 10
    m.out.bias.requires_grad_(False)
    assert count_parameters(m) == ParamCount(trainable=40, frozen=10)


def test_meta_device_model_counts_like_a_real_one(tiny):
    config = tiny.config("llama")
    real = AutoModel.from_config(config)
    with torch.device("meta"):
        meta = AutoModel.from_config(config)
    assert next(meta.parameters()).is_meta
    assert count_parameters(meta) == count_parameters(real)
    assert count_parameters(real).total == sum(p.numel() for p in real.parameters())


def test_empty_model_ratio_is_zero():
    assert count_parameters(nn.Module()).ratio == 0.0
