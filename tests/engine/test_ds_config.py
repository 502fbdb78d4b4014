"""ds_configs/*.json load and fill; conflicts between the JSON and the run config name both sides."""
from __future__ import annotations

import json

import pytest

from megaprompt.config import parse_args
from megaprompt.engine.ds_config import DSConfigError, fill_ds_config, read_ds_config, resolve_precision, zero_stage
from tests.engine.conftest import ROOT

CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))


def test_the_three_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"zero2.json", "zero3.json", "zero3_offload.json"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_fills(path):
    raw = read_ds_config(str(path))
    # they hold only ZeRO / offload / precision settings: batch, lr, clipping come from the run config
    assert set(raw) <= {"zero_optimization", "bf16", "fp16", "zero_allow_untested_optimizer"}
    run = parse_args(["--batch_size", "4", "--grad_accum", "3", "--lr", "5e-3", "--max_grad_norm", "0.5"])
    cfg = fill_ds_config(raw, run, world_size=2, total_steps=100, precision="bf16", cpu_accelerator=False)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 4 * 3 * 2 and cfg["gradient_clipping"] == 0.5
    assert cfg["optimizer"]["params"]["lr"] == 5e-3 and cfg["scheduler"]["params"]["warmup_max_lr"] == 5e-3
    assert cfg["scheduler"]["params"]["total_num_steps"] == 100 and cfg["scheduler"]["params"]["warmup_num_steps"] == 10
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert cfg["tensorboard"]["enabled"] and cfg["tensorboard"]["output_path"].endswith("tb")
    assert zero_stage(cfg) in (2, 3)
    assert raw == read_ds_config(str(path))   # the input is not modified


def test_value_in_both_places_must_agree(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8}))
    raw = read_ds_config(str(p))
    same = parse_args(["--batch_size", "8"])
    assert fill_ds_config(raw, same, 1, 10, "fp32", True, str(p))["train_micro_batch_size_per_gpu"] == 8
    with pytest.raises(DSConfigError, match=r"ds.json sets train_micro_batch_size_per_gpu=8 .*--batch_size=16"):
        fill_ds_config(raw, parse_args(["--batch_size", "16"]), 1, 10, "fp32", True, str(p))


def test_train_batch_size_must_multiply_out(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 30}))
    with pytest.raises(DSConfigError, match="train_batch_size=30 .* = 32"):
        fill_ds_config(read_ds_config(str(p)), parse_args(["--batch_size", "8"]), 4, 10, "fp32", True, str(p))


def test_lr_conflict_names_both(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}))
    with pytest.raises(DSConfigError, match=r"optimizer.params.lr=0.001 .*--lr=0.01"):
        fill_ds_config(read_ds_config(str(p)), parse_args(["--lr", "1e-2"]), 1, 10, "fp32", True, str(p))


@pytest.mark.parametrize("text,match", [
    ('{"zero_optimization": {"stage": 3,}}', r"bad.json:1: malformed JSON at column \d+"),
    ('{"zero_optimization": {"stage": 4}}', r"stage=4, expected 0, 1, 2 or 3"),
    ('[1, 2]', "expected a JSON object"),
    ('{"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}', "offload_param needs"),
    ('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}', "expected none, cpu or nvme"),
])
def test_bad_json_gets_a_one_line_error(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(DSConfigError, match=match) as err:
        read_ds_config(str(p))
    assert "\n" not in str(err.value) and "bad.json" in str(err.value)


def test_missing_file():
    with pytest.raises(DSConfigError, match="nope.json: no such file"):
        read_ds_config("nope.json")


def test_precision_resolution():
    assert resolve_precision("auto", {}, on_gpu=False, bf16_ok=False, path="x") == "fp32"
    assert resolve_precision("auto", {}, on_gpu=True, bf16_ok=True, path="x") == "bf16"
    assert resolve_precision("auto", {"fp16": {"enabled": True}}, True, True, "x") == "fp16"
    with pytest.raises(DSConfigError, match="x enables fp16 but --precision bf16"):
        resolve_precision("bf16", {"fp16": {"enabled": True}}, True, True, "x")


def test_cpu_accelerator_uses_torch_adam_unless_offloading():
    run = parse_args([])
    assert fill_ds_config({}, run, 1, 5, "fp32", True)["optimizer"]["params"]["torch_adam"] is True
    off = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    assert "torch_adam" not in fill_ds_config(off, run, 1, 5, "fp32", True)["optimizer"]["params"]


def test_no_warmup_starts_at_full_lr():
    # DeepSpeed's WarmupLR rejects 0 warmup steps: a 1-step "warmup" that already starts at the full lr
    cfg = fill_ds_config({}, parse_args(["--warmup_ratio", "0", "--lr", "2e-3"]), 1, 50, "fp32", True)
    sched = cfg["scheduler"]["params"]
    assert sched["warmup_num_steps"] == 1 and sched["warmup_min_lr"] == sched["warmup_max_lr"] == 2e-3
