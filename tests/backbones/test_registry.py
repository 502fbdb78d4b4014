"""Adapter registry, backbone specs and the built-in tiny backbones."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from megaprompt.backbones import (ATTN_NAME, SUPPORTED_MODEL_TYPES, UnsupportedBackbone, get_adapter,
                                  is_decoder_type)
from megaprompt.backbones.load import BackboneNotFound, describe_supported, load_backbone, load_config
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig


def test_supported_types_are_exactly_the_ten_families(tiny):
    assert set(SUPPORTED_MODEL_TYPES) == set(tiny.families)


def test_unsupported_type_error_lists_supported_ones():
    with pytest.raises(UnsupportedBackbone) as err:
        get_adapter("gpt2")
    msg = str(err.value)
    assert "'gpt2'" in msg and "\n" not in msg
    for t in SUPPORTED_MODEL_TYPES:
        assert t in msg
    assert isinstance(err.value, ValueError)


def test_build_model_on_unsupported_backbone_fails_before_touching_it():
    from transformers import GPT2Config

    gpt2 = AutoModel.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    impl = gpt2.config._attn_implementation
    with pytest.raises(UnsupportedBackbone, match="supported: .*bert.*llama"):
        build_model(gpt2, PromptConfig(method="pt2", prompt_len=2), "cls", 2)
    assert gpt2.config._attn_implementation == impl


def test_spec_facts(tiny, family):
    bb = tiny.backbone(family)
    adapter = get_adapter(family)
    spec = adapter.spec(bb, "x")
    cfg = bb.config
    assert spec.model_type == family and spec.name == "x"
    assert spec.num_layers == cfg.num_hidden_layers == len(adapter.attention_modules(bb))
    assert spec.hidden_size == cfg.hidden_size
    assert spec.num_heads == cfg.num_attention_heads
    assert spec.is_decoder == tiny.is_decoder(family) == is_decoder_type(family)
    if tiny.is_decoder(family):
        assert spec.num_kv_heads == cfg.num_key_value_heads < spec.num_heads
        assert spec.head_dim == cfg.head_dim
        assert adapter.attention_modules(bb)[0].k_proj.out_features == spec.num_kv_heads * spec.head_dim
    else:
        assert spec.num_kv_heads == spec.num_heads
        assert spec.head_dim * spec.num_heads == cfg.hidden_size
    assert spec.to_dict()["num_kv_heads"] == spec.num_kv_heads


def test_install_routes_attention_and_tags_every_layer(tiny, family):
    bb = tiny.backbone(family)
    model = build_model(bb, PromptConfig(method="pt2", prompt_len=2), "cls", 2)
    mods = get_adapter(family).attention_modules(model.backbone)
    assert [m._mp_layer for m in mods] == list(range(model.spec.num_layers))
    assert all(m._mp_eager is False for m in mods) or family == "deberta-v2"   # sdpa backbones: no weights
    if family != "deberta-v2":
        assert model.backbone.config._attn_implementation == ATTN_NAME
    # the tags are plain attributes: they add no parameters/buffers to the state dict
    assert not any("_mp_" in k for k in model.state_dict())


@pytest.mark.parametrize("method", ["ft", "head", "lester"])
def test_methods_without_prefix_leave_attention_alone(tiny, method):
    bb = tiny.backbone("llama")
    impl = bb.config._attn_implementation
    model = build_model(bb, PromptConfig(method=method, prompt_len=2), "cls", 2)
    assert model.backbone.config._attn_implementation == impl
    assert not hasattr(model.backbone.layers[0].self_attn, "_mp_layer")


@pytest.mark.parametrize("name,model_type,kv", [("tiny-bert", "bert", 4), ("tiny-deberta", "deberta-v2", 4),
                                                ("tiny-llama", "llama", 2)])
def test_builtin_tiny_backbones_load_offline(name, model_type, kv):
    model, config = load_backbone(name, seed=1)
    assert config.model_type == model_type
    spec = get_adapter(model_type).spec(model)
    assert spec.num_kv_heads == kv
    again, _ = load_backbone(name, seed=1)
    first = next(iter(model.state_dict().values()))
    assert torch.equal(first, next(iter(again.state_dict().values())))  # seeded


def test_load_config_errors_are_one_line():
    with pytest.raises(BackboneNotFound, match="no such directory") as err:
        load_config("./definitely/not/here")
    assert "\n" not in str(err.value)
    assert "deberta-v2" in describe_supported() and "tiny-llama" in describe_supported()
