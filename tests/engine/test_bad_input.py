"""User mistakes fail fast, before data or model loading, with one line naming what is wrong."""
from __future__ import annotations

import json

import pytest
import yaml

from megaprompt.train import main
from tests.engine.conftest import ROOT

Z3 = str(ROOT / "ds_configs" / "zero3.json")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


def fails(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert line and needle in line[-1], err[-2000:]
    return line[-1]


def base(tmp_path, *extra):
    return ["--backbone", "tiny-bert", "--output_dir", str(tmp_path / "out"), "--ds_config", Z3, *extra]


def test_missing_ds_config(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--ds_config", str(tmp_path / "nope.json")), "nope.json: no such file")


def test_malformed_ds_config(tmp_path, capsys):
    p = tmp_path / "bad.json"
    p.write_text('{"zero_optimization": {"stage": 3\n')
    fails(capsys, base(tmp_path, "--ds_config", str(p)), "bad.json:2: malformed JSON")


def test_wrong_stage(tmp_path, capsys):
    p = tmp_path / "s5.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 5}}))
    fails(capsys, base(tmp_path, "--ds_config", str(p)), "stage=5, expected 0, 1, 2 or 3")


def test_backbone_path_that_does_not_exist(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--backbone", str(tmp_path / "no_model")), "no such directory")


def test_hub_name_while_offline(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--backbone", "someone/not-cached-model"), "Hugging Face hub name (offline?)")


def test_unsupported_family_lists_supported(tmp_path, capsys):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    line = fails(capsys, base(tmp_path, "--backbone", str(d)), "'gpt2' is not supported")
    assert "bert" in line and "llama" in line and "deberta-v2" in line


def test_sequence_beyond_position_limit(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--max_seq_len", "600"), "max_seq_len 600 = 600 exceeds tiny-bert's 512 positions")


def test_lester_prompts_take_positions(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--method", "lester", "--prompt_len", "20", "--max_seq_len", "500"),
          "500 + prompt_len 20 (lester prompts take positions) = 520 exceeds")


def test_batch_that_cannot_be_filled(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--batch_size", "4096"), "cannot fill one global batch of 4096")


def test_output_dir_of_another_run(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints" / "step_5").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"backbone": "tiny-bert", "lr": 0.5, "task": "demo"}))
    fails(capsys, base(tmp_path), "holds outputs of another run (lr: 0.5 there, 0.01 now)")
    assert (out / "checkpoints" / "step_5").is_dir()     # nothing of the other run was touched
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.5


def test_unknown_task_suggests(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--task", "conll2033"), "unknown task 'conll2033'")


def test_resume_path_that_is_not_a_checkpoint(tmp_path, capsys):
    fails(capsys, base(tmp_path, "--resume", str(tmp_path)), "not a complete megaprompt checkpoint")


def test_resume_with_a_different_world_size(tmp_path, capsys):
    from megaprompt.config import parse_args
    tag = tmp_path / "out" / "checkpoints" / "step_3"
    tag.mkdir(parents=True)
    (tmp_path / "out" / "config.yaml").write_text(parse_args(base(tmp_path)).to_yaml())   # the same run
    (tag / "state.json").write_text(json.dumps({"step": 3, "world": 2}))
    (tag / "COMPLETE").write_text("ok\n")
    fails(capsys, base(tmp_path), "was written by 2 ranks, this job has 1")
    assert (tag / "COMPLETE").is_file()
