"""Checkpoint bookkeeping: only complete saves count; interrupted ones never shadow the previous one."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megaprompt.engine import checkpoint as ckpt


def _tag(root, step, complete=True):
    p = root / f"step_{step}"
    p.mkdir(parents=True)
    (p / "state.json").write_text("{}")
    if complete:
        (p / ckpt.MARKER).write_text("ok\n")
    return p


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
    ckpt._rotate(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4", "step_9"]


def test_rng_state_roundtrips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_file(ckpt._rng_tensors(), str(tmp_path / "rng.safetensors"))
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt._set_rng(load_file(str(tmp_path / "rng.safetensors")))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
