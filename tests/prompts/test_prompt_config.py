"""PromptConfig validation and ``prompt_layers`` parsing."""
from __future__ import annotations

import pytest

from megaprompt.prompts import METHODS, PromptConfig, parse_layers


def test_defaults_are_the_paper_setup():
    cfg = PromptConfig()
    assert (cfg.method, cfg.reparam, cfg.prompt_layers, cfg.init) == ("pt2", "none", "all", "normal")
    assert cfg.has_prompt
    assert set(METHODS) == {"pt2", "lester", "ft", "head"}
    assert [PromptConfig(method=m).has_prompt for m in ("pt2", "lester", "ft", "head")] == [True, True, False, False]


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="bitfit"), r"method='bitfit'.*pt2, lester, ft, head"),
    (dict(reparam="lstm"), r"reparam='lstm'.*none, mlp"),
    (dict(init="xavier"), r"init='xavier'.*normal, zero"),
    (dict(method="pt2", prompt_len=0), r"prompt_len=0.*pt2"),
    (dict(method="lester", prompt_len=-1), r"prompt_len=-1.*lester"),
    (dict(prefix_dropout=1.0), r"prefix_dropout=1.0"),
    (dict(prefix_dropout=-0.1), r"prefix_dropout=-0.1"),
    (dict(mlp_hidden=0), r"mlp_hidden=0"),
    (dict(prompt_layers="last:0"), r"prompt_layers='last:0'"),
    (dict(prompt_layers="first:x"), r"prompt_layers='first:x'"),
    (dict(prompt_layers="a,b"), r"prompt_layers='a,b'"),
    (dict(prompt_layers=""), r"prompt_layers=''"),
    (dict(prompt_layers="every"), r"prompt_layers='every'"),
    (dict(prompt_layers="-1"), r"layer -1 out of range"),
])
def test_invalid_config_raises_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        PromptConfig(**kwargs)
    assert "\n" not in str(err.value)
    assert "1000000000" not in str(err.value)  # the depth is unknown at config time


@pytest.mark.parametrize("method", ["ft", "head"])
def test_methods_without_prompt_accept_zero_length(method):
    assert PromptConfig(method=method, prompt_len=0).prompt_len == 0


@pytest.mark.parametrize("spec,n,expected", [
    ("all", 3, [0, 1, 2]),
    ("last:2", 5, [3, 4]),
    ("first:2", 5, [0, 1]),
    ("last:3", 3, [0, 1, 2]),
    ("first:3", 3, [0, 1, 2]),
    ("0, 2", 4, [0, 2]),
    ("2,0,2", 3, [0, 2]),           # sorted, de-duplicated
    ("3", 4, [3]),
    ([1, 0], 2, [0, 1]),
])
def test_parse_layers(spec, n, expected):
    assert parse_layers(spec, n) == expected


@pytest.mark.parametrize("spec,n,match", [
    ("4", 4, "layer 4 out of range for a 4-layer backbone"),
    ("last:9", 3, "last:9 asks for 9 layers but the backbone has 3"),     # never clamped silently
    ("first:4", 3, "first:4 asks for 4 layers but the backbone has 3"),
    ("0,7", 4, "layer 7 out of range"),
    ([5], 2, "layer 5 out of range"),
    ("last:0", 4, "expected all, last:N, first:N"),
    ("first:-2", 4, "expected all, last:N, first:N"),
    ("1;2", 4, "expected all, last:N, first:N"),
    (",", 4, "expected all, last:N, first:N"),
])
def test_parse_layers_errors(spec, n, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_layers(spec, n)
    assert "\n" not in str(err.value)
