"""Loop behaviour in one process: early stopping, NaN detection, and the other launchers (torchrun)."""
from __future__ import annotations

import json
import subprocess
import sys


from tests.engine.conftest import ROOT, env, free_port

Z3 = str(ROOT / "ds_configs" / "zero3.json")



def main(argv: list[str]) -> subprocess.CompletedProcess:
    """One plain ``python megaprompt/train.py`` process (DeepSpeed keeps process groups per process)."""
    return subprocess.run([sys.executable, str(ROOT / "megaprompt" / "train.py"), *argv], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)


def tiny(out, *extra):
    return ["--backbone", "tiny-bert", "--output_dir", str(out), "--ds_config", Z3, "--batch_size", "8",
            "--prompt_len", "4", "--max_eval_examples", "32", "--max_train_examples", "160", "--seed", "3", *extra]


def test_early_stopping_stops_after_patience_without_improvement(tmp_path):
    # lr so small that the dev metric cannot change: the 2nd evaluation is not better than the 1st
    proc = main(tiny(tmp_path, "--lr", "1e-12", "--max_steps", "20", "--eval_every", "2", "--early_stopping", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["steps"] == 4 and m["stopped"].startswith("early stopping") and m["best"]["step"] == 2


def test_non_finite_loss_is_reported_with_its_step(tmp_path):
    proc = main(tiny(tmp_path, "--lr", "1e30", "--max_steps", "20", "--max_grad_norm", "0"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")][-1]
    assert "non-finite training loss at step" in err
    step = int(err.split("at step ")[1].split()[0])
    assert 2 <= step <= 20          # the first step's loss is finite; the exploded update shows after


def test_torchrun_launch_works_too(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "megaprompt" / "train.py"), *tiny(tmp_path, "--max_steps", "4", "--eval_every", "4")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 4


def test_resume_none_sets_the_earlier_run_aside(tmp_path):
    first = main(tiny(tmp_path, "--max_steps", "3", "--eval_every", "3"))
    assert first.returncode == 0, first.stderr[-3000:]
    again = main(tiny(tmp_path, "--max_steps", "2", "--eval_every", "2", "--lr", "5e-2", "--resume", "none"))
    assert again.returncode == 0, again.stderr[-3000:]
    previous = list(tmp_path.glob("previous-*"))
    assert len(previous) == 1 and (previous[0] / "checkpoints" / "step_3" / "COMPLETE").is_file()
    assert (previous[0] / "metrics.json").is_file()
    # the new run's checkpoints are its own: nothing of the 3-step run is left to be resumed by mistake
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_2"]
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2
