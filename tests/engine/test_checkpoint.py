"""Checkpoint bookkeeping: only complete saves count; interrupted ones never shadow the previous one."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from megaprompt.engine import checkpoint as ckpt


def _tag(root, step, complete=True, lineage=("a",)):
    p = root / f"step_{step}"
    p.mkdir(parents=True)
    (p / "state.json").write_text(json.dumps({"step": step, "lineage": list(lineage)}))
    if complete:
        (p / ckpt.MARKER).write_text("ok\n")
    return p


def _head(root, tag, lineage):
    (root / ckpt.HEAD).write_text(json.dumps({"tag": tag, "lineage": list(lineage)}))


def test_auto_resume_takes_newest_complete(tmp_path):
    _tag(tmp_path, 10)
    newest = _tag(tmp_path, 20)
    _tag(tmp_path, 30, complete=False)          # a save killed half-way
    assert ckpt.find_resume(tmp_path, "auto") == newest
    assert ckpt.find_resume(tmp_path, "none") is None
    assert ckpt.find_resume(tmp_path / "missing", "auto") is None


def test_explicit_resume_path_must_be_complete(tmp_path):
    bad = _tag(tmp_path, 5, complete=False)
    with pytest.raises(ValueError, match="not a complete megaprompt checkpoint"):
        ckpt.find_resume(tmp_path, str(bad))


def test_rotation_keeps_last_k_and_drops_stale_partials(tmp_path):
    for s in (1, 2, 3, 4):
        _tag(tmp_path, s)
    _tag(tmp_path, 0, complete=False)
    _tag(tmp_path, 9, complete=False)            # newer than everything: a save in progress, keep it
    ckpt._rotate(tmp_path, keep=2, lineage=["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4", "step_9"]


def test_resume_and_rotation_follow_the_runs_own_history_not_the_largest_step(tmp_path):
    """A fork b from a's step 10: b's checkpoints are the newest of *its* history although a foreign trajectory c
    has larger step numbers; rotation keeps b's newest two (its ancestor a@10 counts as history) and never
    deletes c's."""
    _tag(tmp_path, 10, lineage=["a"])
    _tag(tmp_path, 20, lineage=["a", "b"])
    b30 = _tag(tmp_path, 30, lineage=["a", "b"])
    for s in (40, 50):
        _tag(tmp_path, s, lineage=["c"])
    _head(tmp_path, "step_30", ["a", "b"])
    assert ckpt.find_resume(tmp_path, "auto") == b30
    ckpt._rotate(tmp_path, keep=2, lineage=["a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_20", "step_30", "step_40", "step_50"]


def test_auto_resume_survives_a_head_that_lags_its_newest_checkpoint(tmp_path):
    """A crash between COMPLETE and the HEAD update: HEAD still names the previous tag of the same history, and
    the newest complete checkpoint of that history is taken."""
    _tag(tmp_path, 10, lineage=["a"])
    newest = _tag(tmp_path, 20, lineage=["a"])
    _head(tmp_path, "step_10", ["a"])
    assert ckpt.find_resume(tmp_path, "auto") == newest


def test_malformed_state_and_head_name_their_file(tmp_path):
    p = _tag(tmp_path, 5)
    (p / "state.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"step_5/state.json: not valid JSON"):
        ckpt.read_state(p)
    (tmp_path / ckpt.HEAD).write_text("[1")
    with pytest.raises(ckpt.CheckpointError, match=r"HEAD.json: not valid JSON"):
        ckpt.find_resume(tmp_path, "auto")


def test_rng_state_roundtrips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_file(ckpt._rng_tensors(), str(tmp_path / "rng.safetensors"))
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt._set_rng(load_file(str(tmp_path / "rng.safetensors")))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
