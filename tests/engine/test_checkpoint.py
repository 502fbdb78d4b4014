"""Checkpoint bookkeeping: only complete saves count; interrupted ones never shadow the previous one."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from megaprompt.engine import checkpoint as ckpt
from tests.engine.conftest import assert_only_trainable_in_checkpoint
from tests.tasks.fixtures import train_env  # noqa: F401  (in-process training fixture)


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


# ---- a real training whose save fails partway ----------------------------------------------------------------
Z3 = str(Path(__file__).resolve().parents[2] / "ds_configs" / "zero3.json")


# what a save may hold: prompt and head (tiny-bert: 2 layers x key/value x 64 per prompt slot), no backbone
TRAINABLE = {"prompts.shared.table": (2, 2 * 2 * 64), "heads.demo.out.weight": (2, 64), "heads.demo.out.bias": (2,)}


def _tiny_run(out, *extra):
    from megaprompt.train import main
    return main(["--backbone", "tiny-bert", "--task", "demo", "--output_dir", str(out), "--ds_config", Z3,
                 "--batch_size", "4", "--prompt_len", "2", "--max_train_examples", "64", "--max_eval_examples", "16",
                 "--max_steps", "6", "--save_every", "2", "--eval_every", "6", "--log_every", "1", "--seed", "5",
                 *extra])


def test_save_that_fails_partway_is_never_resumed(tmp_path, monkeypatch, train_env):  # noqa: F811
    """The disk fills up while DeepSpeed writes step 4's files: step 4 must not count as a checkpoint (no
    COMPLETE marker), and ``--resume auto`` continues from step 2, the last complete save. Every complete
    save holds the trainable tensors only, loadable without pickle."""
    real_save = torch.save

    def save_or_fail(obj, f, *args, **kwargs):
        if "step_4" in str(f):
            raise OSError(28, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_or_fail)
    with pytest.raises(OSError, match="No space left"):
        _tiny_run(tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "step_2" / ckpt.MARKER).is_file()
    assert (ckpts / "step_4").is_dir(), "the failing save had started writing step 4"
    assert not (ckpts / "step_4" / ckpt.MARKER).exists()
    assert not (tmp_path / "metrics.json").exists()
    assert_only_trainable_in_checkpoint(ckpts / "step_2", TRAINABLE)

    assert _tiny_run(tmp_path, "--resume", "auto") == 0
    log = (tmp_path / "train.log").read_text()
    assert re.search(r"resumed from \S*step_2\b", log), log[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["steps"] == 6
    # the interrupted step-4 save was replaced by a complete one, or rotated away
    assert not (ckpts / "step_4").exists() or (ckpts / "step_4" / ckpt.MARKER).is_file()
    assert_only_trainable_in_checkpoint(ckpts / "step_6", TRAINABLE)
