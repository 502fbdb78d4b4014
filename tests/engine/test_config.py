"""Typed config: defaults < recipe < CLI; unknown names fail with the closest valid one."""
from __future__ import annotations

import pytest
import yaml

from megaprompt.config import FIELDS, load_recipe, parse_args
from tests.engine.conftest import ROOT

REQUIRED_FLAGS = ("ds_config", "output_dir", "backbone", "method", "prompt_len", "reparam", "prompt_layers", "task",
                  "data_dir", "max_steps", "epochs", "lr", "batch_size", "grad_accum", "max_seq_len",
                  "gradient_checkpointing", "eval_every", "save_every", "resume", "seed", "precision")


def test_every_flag_the_docs_promise_exists():
    for name in REQUIRED_FLAGS:
        assert name in FIELDS, name


def test_cli_overrides_recipe_overrides_defaults(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("lr: 5.0e-3\nprompt_len: 32\nbackbone: tiny-llama\ngradient_checkpointing: true\n")
    cfg = parse_args(["--recipe", str(r), "--prompt_len", "8", "--local_rank=1", "--deepspeed", "x.json"])
    assert cfg.train.lr == 5e-3 and cfg.prompt.prompt_len == 8 and cfg.backbone == "tiny-llama"
    assert cfg.train.gradient_checkpointing is True and cfg.train.ds_config == "x.json"
    assert cfg.train.batch_size == 16     # untouched default


def test_bool_flag_forms():
    assert parse_args(["--gradient_checkpointing"]).train.gradient_checkpointing is True
    assert parse_args(["--gradient_checkpointing", "false"]).train.gradient_checkpointing is False


def test_unknown_flag_suggests(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--prompt_lenght", "4"])
    assert "unknown flag --prompt_lenght; did you mean 'prompt_len'?" in capsys.readouterr().err


def test_unknown_recipe_key_names_file_and_suggests(tmp_path):
    r = tmp_path / "bad.yaml"
    r.write_text("lr: 1e-2\nbatchsize: 8\n")
    with pytest.raises(ValueError, match=r"bad.yaml:2: unknown key 'batchsize'; did you mean 'batch_size'\?"):
        load_recipe(str(r))


def test_bad_values_are_one_line(tmp_path, capsys):
    for argv, msg in ((["--prompt_len", "abc"], "--prompt_len: prompt_len='abc': expected int"),
                      (["--method", "lora"], "method='lora': expected one of pt2, lester, ft, head"),
                      (["--prompt_layers", "last:0"], "prompt_layers='last:0'"),
                      (["--precision", "fp8"], "precision='fp8'")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert msg in capsys.readouterr().err
    r = tmp_path / "broken.yaml"
    r.write_text("lr: [1,\n")
    with pytest.raises(ValueError, match=r"broken.yaml:\d+: invalid YAML"):
        load_recipe(str(r))


def test_resolved_config_roundtrips_through_yaml(tmp_path):
    cfg = parse_args(["--lr", "3e-3", "--prompt_layers", "last:2"])
    r = tmp_path / "saved.yaml"
    r.write_text(cfg.to_yaml())
    again = parse_args(["--recipe", str(r)])
    assert again.flat() == cfg.flat()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    values = load_recipe(str(path))
    cfg = parse_args(["--recipe", str(path)])
    assert cfg.data.task == values["task"] and cfg.prompt.method == "pt2"
    assert set(yaml.safe_load(path.read_text())) <= set(FIELDS)
