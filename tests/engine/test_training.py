"""End-to-end 2-rank ZeRO training through the deepspeed launcher (CPU, gloo, tiny BERT, demo task)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.engine.conftest import ROOT, env, metrics, run_ok, scalars, tiny_args

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    run_ok(tiny_args(out))
    return out


def test_loss_decreases(baseline):
    loss = [v for _, v in scalars(baseline / "tb", "train/loss")]
    assert len(loss) == 30
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.02, loss


def test_metrics_json_schema(baseline):
    m = metrics(baseline)
    for key in ("task", "method", "final", "best", "trainable_params", "total_params", "trainable_ratio", "steps",
                "wall_s", "samples_per_s"):
        assert key in m
    assert m["task"] == "demo" and m["method"] == "pt2" and m["steps"] == 30
    assert set(m["final"]) == {"accuracy", "macro_f1"} and 0 <= m["final"]["accuracy"] <= 100
    assert m["best"]["step"] == 30
    # tiny-bert (2 layers, 4 heads x 16) + pt2 P=4 + 2-class head on 64 hidden
    assert m["trainable_params"] == 4 * 2 * 2 * 64 + 64 * 2 + 2
    assert m["trainable_ratio"] == pytest.approx(m["trainable_params"] / m["total_params"])


def test_tensorboard_has_every_series(baseline):
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s",
                "mem/peak_mb", "eval/accuracy", "params/trainable", "params/total", "params/trainable_ratio_pct"):
        assert scalars(baseline / "tb", tag), tag
    lr = [v for _, v in scalars(baseline / "tb", "train/lr")]
    assert max(lr) == pytest.approx(1e-2, rel=1e-6) and lr[-1] < lr[len(lr) // 2]   # warmup then decay


def test_export_holds_exactly_prompt_and_head(baseline):
    tensors = load_file(str(baseline / "export" / "prompt.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "prompt.table": (4, 2 * 2 * 4 * 16), "head.out.weight": (2, 64), "head.out.bias": (2,)}
    meta = json.loads((baseline / "export" / "prompt.json").read_text())
    assert meta["method"] == "pt2" and meta["backbone"]["num_layers"] == 2 and meta["label_names"]


def test_export_reproduces_dev_metric(baseline, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megaprompt.predict", "--export", str(baseline / "export"),
                           "--split", "dev", "--output_dir", str(tmp_path), "--max_seq_len", "128"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "demo_dev_metrics.json").read_text())
    best = metrics(baseline)["best"]
    assert got["examples"] == 240
    for k, v in got["metrics"].items():
        assert v == pytest.approx(best[k], abs=1e-9), k


def test_predict_under_the_deepspeed_launcher(baseline, tmp_path):
    # 2 ranks each predict a shard; outputs are gathered and rank 0 writes the same metrics
    run_ok(["--export", str(baseline / "export"), "--split", "dev", "--output_dir", str(tmp_path)],
           script=ROOT / "megaprompt" / "predict.py")
    got = json.loads((tmp_path / "demo_dev_metrics.json").read_text())
    best = metrics(baseline)["best"]
    for k, v in got["metrics"].items():
        assert v == pytest.approx(best[k], abs=1e-9), k


def test_stop_and_resume_matches_uninterrupted(baseline, tmp_path):
    out = tmp_path / "resumed"
    run_ok(tiny_args(out, "--stop_at_step", "13"))
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "step_13" / "COMPLETE").is_file()
    run_ok(tiny_args(out, "--resume", "auto"))
    a = load_file(str(baseline / "export" / "prompt.safetensors"))
    b = load_file(str(out / "export" / "prompt.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, rtol=0, err_msg=k)
    # the step counter continued: the resumed job logged steps 14..30 only
    steps = [s for s, _ in scalars(out / "tb", "train/loss")]
    assert steps == list(range(1, 31))
    assert metrics(out)["steps"] == 30


def test_zero2_and_zero3_give_the_same_loss_curve(baseline, tmp_path):
    out = tmp_path / "z2"
    args = tiny_args(out)
    args[args.index("--ds_config") + 1] = str(ROOT / "ds_configs" / "zero2.json")
    run_ok(args)
    z3 = [v for _, v in scalars(baseline / "tb", "train/loss")]
    z2 = [v for _, v in scalars(out / "tb", "train/loss")]
    # same seed, same data order, same math; only the reduction order of gradients differs (fp32)
    np.testing.assert_allclose(z2, z3, atol=1e-4, rtol=0)


def test_gradient_checkpointing_gives_the_same_result(baseline, tmp_path):
    out = tmp_path / "ckpt"
    run_ok(tiny_args(out, "--gradient_checkpointing"))
    a = load_file(str(baseline / "export" / "prompt.safetensors"))
    b = load_file(str(out / "export" / "prompt.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5, rtol=0, err_msg=k)
    np.testing.assert_allclose([v for _, v in scalars(out / "tb", "train/loss")],
                               [v for _, v in scalars(baseline / "tb", "train/loss")], atol=1e-5, rtol=0)
