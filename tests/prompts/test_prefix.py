"""DeepPrefix: parameter layout, per-layer outputs, init; the bank's per-row expansion and per-example dropout."""
from __future__ import annotations

import pytest
import torch

from megaprompt.backbones import BackboneSpec
from megaprompt.prompts import DeepPrefix, PromptConfig, build_prompt
from megaprompt.prompts.bank import gather_prefix

SPEC = BackboneSpec(model_type="llama", num_layers=3, hidden_size=24, num_heads=6, num_kv_heads=2, head_dim=4,
                    max_positions=64, is_decoder=True)
P = 5


def make(**kw) -> DeepPrefix:
    kw = {"prompt_len": P, "prefix_dropout": 0.0, **kw}
    prefix = build_prompt(PromptConfig(method="pt2", **kw), SPEC)
    assert isinstance(prefix, DeepPrefix) and prefix.kind == "prefix"
    return prefix


def gather(prefix, batch):
    """Per layer (key, value) of ``batch`` rows of this one prompt, as the model passes them to the layers."""
    state = gather_prefix(torch.nn.ModuleDict({"p": prefix}), [["p"]], SPEC.num_layers, batch, single=0)
    assert all(m is None for m in state.mask)                   # one prompt, one length: every slot visible
    return state.kv


def test_build_prompt_by_method():
    assert build_prompt(PromptConfig(method="ft"), SPEC) is None
    assert build_prompt(PromptConfig(method="head"), SPEC) is None
    assert build_prompt(PromptConfig(method="lester", prompt_len=3), SPEC).kind == "input"


def test_table_layout_and_shapes():
    prefix = make().eval()
    width = SPEC.num_layers * 2 * SPEC.num_kv_heads * SPEC.head_dim
    assert dict((n, tuple(p.shape)) for n, p in prefix.named_parameters()) == {"table": (P, width)}
    one = prefix()
    assert one.shape == (SPEC.num_layers, 2, SPEC.num_kv_heads, P, SPEC.head_dim)
    out = gather(prefix, 3)
    assert len(out) == SPEC.num_layers
    # documented layout: table row = prompt slot; columns = (layer, key/value, kv head, head_dim)
    view = prefix.table.view(P, SPEC.num_layers, 2, SPEC.num_kv_heads, SPEC.head_dim)
    for layer, (k, v) in enumerate(out):
        assert torch.equal(one[layer, 0], view[:, layer, 0].transpose(0, 1))
        assert k.shape == v.shape == (3, SPEC.num_kv_heads, P, SPEC.head_dim)
        for b in range(3):
            assert torch.equal(k[b], view[:, layer, 0].transpose(0, 1))
            assert torch.equal(v[b], view[:, layer, 1].transpose(0, 1))


def test_subset_layers_give_none_and_shrink_the_table():
    prefix = make(prompt_layers="0,2")
    assert prefix.layers == [0, 2] and prefix().shape[0] == 2
    out = gather(prefix, 2)
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert prefix.table.shape == (P, 2 * 2 * SPEC.num_kv_heads * SPEC.head_dim)
    assert gather(make(prompt_layers="last:1"), 1)[:2] == [None, None]
    with pytest.raises(ValueError, match="out of range for a 3-layer"):
        make(prompt_layers="3")


def test_mlp_reparameterization():
    prefix = make(reparam="mlp", mlp_hidden=7)
    shapes = {n: tuple(p.shape) for n, p in prefix.named_parameters()}
    width = SPEC.num_layers * 2 * SPEC.num_kv_heads * SPEC.head_dim
    assert shapes == {"embedding": (P, SPEC.hidden_size), "mlp.0.weight": (7, SPEC.hidden_size), "mlp.0.bias": (7,),
                      "mlp.2.weight": (width, 7), "mlp.2.bias": (width,)}
    # the official reparameterization: Linear -> tanh -> Linear on the prompt embeddings, by hand
    w1, b1 = prefix.get_parameter("mlp.0.weight"), prefix.get_parameter("mlp.0.bias")
    w2, b2 = prefix.get_parameter("mlp.2.weight"), prefix.get_parameter("mlp.2.bias")
    flat = prefix.flat()
    assert flat.shape == (P, width)
    torch.testing.assert_close(flat, torch.tanh(prefix.embedding @ w1.T + b1) @ w2.T + b2)
    # and the per-layer keys/values are that flat prefix in the documented layout
    view = flat.detach().view(P, SPEC.num_layers, 2, SPEC.num_kv_heads, SPEC.head_dim)
    for layer, (k, v) in enumerate(gather(prefix.eval(), 1)):
        torch.testing.assert_close(k[0], view[:, layer, 0].transpose(0, 1))
        torch.testing.assert_close(v[0], view[:, layer, 1].transpose(0, 1))
    prefix.train()
    # every parameter of the MLP gets a gradient through the prefixes
    sum(k.sum() + (v * 2).sum() for k, v in gather(prefix, 2)).backward()
    # the export's materialised table is that flat prefix, computed once
    torch.testing.assert_close(prefix.table_tensor(), flat.detach())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix.parameters())


def test_init():
    torch.manual_seed(0)
    assert make(init="zero").table.abs().sum() == 0
    assert make(init="zero", reparam="mlp").embedding.abs().sum() == 0
    big = build_prompt(PromptConfig(method="pt2", prompt_len=64, init_std=0.5), SPEC)
    assert abs(big.table.std().item() - 0.5) < 0.05
    assert abs(big.table.mean().item()) < 0.05


def test_dropout_is_per_example_in_training_only():
    torch.manual_seed(0)
    prefix = make(prefix_dropout=0.5, init="normal")
    prefix.train()
    k = gather(prefix, 4)[0][0]
    zero_frac = (k == 0).float().mean().item()
    assert 0.3 < zero_frac < 0.7
    assert not torch.equal(k[0], k[1])                  # each example draws its own mask
    prefix.eval()
    k = gather(prefix, 4)[0][0]
    assert (k != 0).all() and torch.equal(k[0], k[3])
