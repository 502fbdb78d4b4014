"""ZeRO-3 keeps optimizer state only for prompt + head, and partitions the frozen backbone (2 real ranks)."""
from __future__ import annotations

import json
import math

import pytest

from tests.engine.conftest import ROOT, assert_only_trainable_in_checkpoint, run_ok

pytestmark = pytest.mark.engine


def test_zero3_state_is_only_trainable_and_frozen_weights_are_partitioned(tmp_path):
    cfg = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    # persist nothing: every tensor of the tiny model would otherwise be under the persistence threshold
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    ds = tmp_path / "z3.json"
    ds.write_text(json.dumps(cfg))
    dump = tmp_path / "dump.json"
    run_ok([str(dump), "--ds_config", str(ds), "--backbone", "tiny-bert", "--task", "demo", "--output_dir",
            str(tmp_path / "run"), "--max_steps", "1", "--batch_size", "4", "--prompt_len", "8",
            "--precision", "fp32"], script=ROOT / "tests" / "engine" / "inspect_zero3.py")
    recs = [json.loads((tmp_path / f"dump.json.rank{r}").read_text()) for r in (0, 1)]
    world = 2
    for rec in recs:
        trainable = rec["trainable_total"]
        assert trainable == rec["counts"][0] == 8 * 2 * 2 * 64 + 64 * 2 + 2
        # ZeRO-3 partitions each parameter separately: ceil(numel / world) per parameter, padded per tensor
        per_param = sum(math.ceil(n / world) for n in rec["trainable_ds_numel"])
        assert sum(rec["fp32_flat"]) == per_param
        assert per_param - math.ceil(trainable / world) < len(rec["trainable_ds_numel"])  # ~ceil(trainable/world)
        # Adam holds exp_avg + exp_avg_sq for exactly that flat partition, nothing for frozen weights
        assert rec["adam_state_numel"] == 2 * per_param
        frozen_total = sum(f[0] for f in rec["frozen"])
        assert frozen_total + trainable == rec["counts"][1]
        for ds_numel, local, visible in rec["frozen"]:
            assert local == math.ceil(ds_numel / world), (ds_numel, local)   # 1/world of it lives here
            assert visible == 0                                               # released outside forward
    # the resume checkpoint both ranks wrote at the end: their shards of prompt + head and nothing frozen
    step = tmp_path / "run" / "checkpoints" / "step_1"
    assert len(list(step.glob("*optim_states.pt"))) == world
    assert_only_trainable_in_checkpoint(step, {"prompts.shared.table": (8, 2 * 2 * 64), "heads.demo.out.weight": (2, 64),
                                               "heads.demo.out.bias": (2,)})
