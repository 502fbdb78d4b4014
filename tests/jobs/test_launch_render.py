"""Launcher without Slurm: golden sbatch scripts, determinism, sweep grids and names, --array specs,
skipping finished elements, validation, and quoting (the rendered script is executed by bash with
stand-in srun/scontrol; a value that looks like shell code must arrive literally and run nothing).

Regenerate the goldens with ``UPDATE_GOLDEN=1 pytest tests/jobs/test_launch_render.py``.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from jobs import sweep as js
from megaprompt import launch

GOLDEN = Path(__file__).with_name("golden")
WORKDIR = "/home/user/megaprompt"
TRAIN_13B = ["--ds_config", "ds_configs/zero3.json", "--backbone", "meta-llama/Llama-2-13b-hf",
             "--task", "rte", "--data_dir", "/datasets/superglue/RTE", "--epochs", "20",
             "--gradient_checkpointing", "true"]

CASES = {
    "single_node": (["--output_dir", "/scratch/runs/demo", "--ntasks_per_node", "2", "--time", "00:30:00",
                     "--mem", "8G", "--job_name", "mp-demo"],
                    ["--backbone", "tiny-bert", "--task", "demo", "--max_steps", "40"]),
    "two_nodes_8gpus": (["--output_dir", "/scratch/runs/llama13b-rte", "--nodes", "2", "--gpus_per_node", "8",
                         "--cpus_per_task", "8", "--mem", "480G", "--time", "24:00:00", "--partition", "gpu",
                         "--account", "proj123", "--qos", "high", "--constraint", "a100&ib",
                         "--sbatch_extra=--mail-type=END,FAIL", "--sbatch_extra=--exclusive",
                         "--env_setup", "module load cuda/12.1",
                         "--env_setup", "source $HOME/venvs/megaprompt/bin/activate",
                         "--signal_seconds", "300", "--max_requeues", "5"],
                        TRAIN_13B),
    "array_throttle": (["--output_dir", "/scratch/sweeps/rte", "--nodes", "2", "--gpus_per_node", "8",
                        "--time", "12:00:00", "--sweep", "lr=5e-3,1e-2", "prompt_len=8,32,128", "seed=1,2,3",
                        "--throttle", "4", "--job_name", "mp-sweep"],
                       TRAIN_13B),
}


def plan_for(launcher: list[str], train: list[str], workdir: str = WORKDIR) -> launch.Plan:
    ns = launch.build_parser().parse_args([*launcher, "--workdir", workdir])
    return launch.make_plan(ns, train)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    plan = plan_for(*CASES[case])
    files = {f"{case}.sbatch": plan.script}
    if plan.manifest is not None:
        files[f"{case}.manifest.json"] = js.dumps_manifest(plan.manifest)
    for name, text in files.items():
        path = GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        assert path.is_file(), f"missing golden {path}; run with UPDATE_GOLDEN=1"
        assert text == path.read_text(), f"{name} differs from the golden file"


def test_render_is_deterministic() -> None:
    a = plan_for(*CASES["array_throttle"])
    b = plan_for(*CASES["array_throttle"])
    assert a.script == b.script and a.manifest == b.manifest


def test_header_contents() -> None:
    s = plan_for(*CASES["two_nodes_8gpus"]).script
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --output=/scratch/runs/llama13b-rte/logs/%j.out", "#SBATCH --constraint=a100&ib",
                 "#SBATCH --mail-type=END,FAIL", "#SBATCH --exclusive", "module load cuda/12.1",
                 "MAX_REQUEUES=5", "    --backbone meta-llama/Llama-2-13b-hf"):
        assert line in s.splitlines(), line
    arr = plan_for(*CASES["array_throttle"]).script
    assert "#SBATCH --array=0-17%4" in arr and "/logs/%A_%a.out" in arr


def test_parse_sweep_and_grid_file(tmp_path: Path) -> None:
    grid = js.parse_sweep_args(["lr=5e-3,1e-2", "prompt_len=8,32,128", "seed=1,2,3"])
    assert grid == {"lr": ["5e-3", "1e-2"], "prompt_len": ["8", "32", "128"], "seed": ["1", "2", "3"]}
    sw = js.expand(grid, tmp_path)
    assert len(sw.elements) == 18
    assert sw.elements[0].name == "lr=5e-3,prompt_len=8,seed=1"
    assert sw.elements[1].params == {"lr": "5e-3", "prompt_len": "8", "seed": "2"}
    assert sw.elements[17].name == "lr=1e-2,prompt_len=128,seed=3"
    f = tmp_path / "g.yaml"
    f.write_text("grid:\n  lr: [5e-3, 0.01]\n  method: pt2\n  reparam: [true, false]\n")
    assert js.load_grid_file(f) == {"lr": ["5e-3", "0.01"], "method": ["pt2"], "reparam": ["true", "false"]}
    assert js.merge_grids(js.load_grid_file(f), {"lr": ["1"]})["lr"] == ["1"]
    for bad in (["lr"], ["lr="], ["lr=1,,2"], ["output_dir=a"], ["bad-key=1"], ["lr=1", "lr=2"]):
        with pytest.raises(ValueError):
            js.parse_sweep_args(bad)
    with pytest.raises(ValueError):
        js.expand({"lr": ["1", "1"]}, tmp_path)


def test_element_names_are_filesystem_safe(tmp_path: Path) -> None:
    assert js.element_name({"backbone": "THUDM/glm-10b", "x": "a b$(c)"}) == "backbone=THUDM_glm-10b,x=a_b__c_"
    long = js.element_name({"recipe": "r" * 400})
    assert len(long) <= js.MAX_NAME_LEN and "/" not in long
    sw = js.expand({"v": ["a/b", "a b"]}, tmp_path)        # both sanitise to v=a_b
    names = [e.name for e in sw.elements]
    assert len(set(names)) == 2 and all(n.startswith("v=a_b-") for n in names)


def test_array_spec() -> None:
    assert js.array_spec([0, 1, 2, 5, 7, 8], 2) == "0-2,5,7-8%2"
    assert js.array_spec([1, 3, 5], 4) == "1,3,5%4"
    assert js.array_spec([3]) == "3"
    with pytest.raises(ValueError):
        js.array_spec([])


def test_finished_elements_are_skipped(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["--output_dir", str(sweep), "--sweep", "seed=1,2,3,4,5,6", "--throttle", "2"]
    first = plan_for(args, ["--task", "demo"])
    assert first.spec.array == "0-5%2"
    for e in first.manifest["elements"]:                    # type: ignore[index]
        if e["index"] in (0, 2, 4):
            Path(e["output_dir"]).mkdir(parents=True)
            (Path(e["output_dir"]) / "metrics.json").write_text("{}")
    again = plan_for(args, ["--task", "demo"])
    assert again.spec.array == "1,3,5%2" and "#SBATCH --array=1,3,5%2" in again.script
    assert [e["finished"] for e in again.manifest["elements"]] == [True, False] * 3  # type: ignore[index]
    assert again.nothing_to_do is None
    for e in again.manifest["elements"]:                    # type: ignore[index]
        Path(e["output_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(e["output_dir"]) / "metrics.json").write_text("{}")
    assert "already finished" in (plan_for(args, ["--task", "demo"]).nothing_to_do or "")


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert launch.main(["--output_dir", str(out), "--sweep", "seed=1,2", "--dry-run", "--", "--task",
                        "demo"]) == 0
    text = capsys.readouterr().out
    assert f"### {out}/job.sbatch" in text and f"### {out}/manifest.json" in text
    assert '"dir": "seed=2"' in text
    assert not out.exists()


@pytest.mark.parametrize("bad", [
    ["--partition", "gpu\n#SBATCH --x"], ["--partition", "a b"], ["--account", "$(id)"],
    ["--sbatch_extra=--x\ntouch /tmp/x"], ["--sbatch_extra=x"], ["--job_name", "a'b"], ["--nodes", "0"], ["--throttle", "2"],
    ["--sweep", "lr=1", "--", "--lr", "2"], ["--", "--output_dir", "x"], ["--", "--resume", "none"],
])
def test_rejects(bad: list[str], tmp_path: Path) -> None:
    i = bad.index("--") if "--" in bad else len(bad)
    with pytest.raises(ValueError):
        plan_for(["--output_dir", str(tmp_path / "o"), *bad[:i]], bad[i + 1:])


def test_unknown_launcher_option_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        launch.main(["--output_dir", "/tmp/x", "--partiton", "gpu", "--dry-run"])
    assert "training arguments go after" in capsys.readouterr().err


def _stub_bin(tmp_path: Path) -> Path:
    """srun / scontrol stand-ins: srun runs its command once as rank 0 of 1 (after its options)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                    'export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1\nexec "$@"\n')
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/bash\n[ "$1" = show ] && echo nodeA && echo nodeB\n'
                        '[ "$1" = requeue ] && echo "$@" >> "$SCONTROL_LOG"\nexit 0\n')
    for p in (srun, scontrol):
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_quoting_executes_nothing(tmp_path: Path) -> None:
    pwn = tmp_path / "pwned"
    evil = [f"$(touch {pwn}_1)", f"`touch {pwn}_2`", f"'; touch {pwn}_3; '", f'"; touch {pwn}_4; "',
            f"a b\nc; touch {pwn}_5"]
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({"weird": evil}))                     # JSON is YAML
    recorder = tmp_path / "record.py"
    recorder.write_text("import json, os, sys\n"
                        "json.dump({'argv': sys.argv[1:], 'rank': os.environ.get('RANK'), "
                        "'addr': os.environ.get('MASTER_ADDR')}, open(os.environ['RECORD'], 'w'))\n")
    sweep = tmp_path / "sweep"
    workdir = tmp_path / f"work dir $(touch {pwn}_w)"
    workdir.mkdir(parents=True)
    plan = plan_for(["--output_dir", str(sweep), "--sweep_file", str(grid), "--entry", str(recorder),
                     "--python", "python3", "--job_name", "q"], ["--recipe", evil[0], "--note", evil[3]],
                    workdir=str(workdir))
    script = tmp_path / "job.sbatch"
    script.write_text(plan.script)
    env = {**os.environ, "PATH": f"{_stub_bin(tmp_path)}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node[A-B]", "SLURM_NNODES": "2", "SCONTROL_LOG": str(tmp_path / "sc.log")}
    for e in plan.manifest["elements"]:                     # type: ignore[index]
        record = tmp_path / f"rec{e['index']}.json"
        proc = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_JOB_ID": "4241",
                              "SLURM_ARRAY_TASK_ID": str(e["index"]), "RECORD": str(record)},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rec = json.loads(record.read_text())
        assert rec["argv"] == ["--recipe", evil[0], "--note", evil[3], "--weird", e["params"]["weird"],
                               "--output_dir", e["output_dir"], "--resume", "auto", "--max_requeues", "3"]
        assert rec["rank"] == "0" and rec["addr"] == "nodeA"
        assert "/" not in e["dir"] and "\n" not in e["dir"]
    assert not list(tmp_path.glob("pwned*")), "a quoted value was executed"


DOC_ARGS = ["--output_dir", "/scratch/alice/sweeps/rte-llama13b", "--workdir", "/home/alice/megaprompt",
            "--job_name", "rte-llama13b", "--partition", "gpu", "--account", "proj123", "--time", "24:00:00",
            "--nodes", "2", "--gpus_per_node", "8", "--cpus_per_task", "8", "--mem", "480G",
            "--env_setup", "module load cuda/12.1", "--env_setup", "source ~/venvs/megaprompt/bin/activate",
            "--sweep", "lr=5e-3,1e-2", "prompt_len=8,32,128", "seed=1,2,3", "--throttle", "4", "--dry-run",
            "--", "--ds_config", "ds_configs/zero3.json", "--backbone", "meta-llama/Llama-2-13b-hf",
            "--task", "rte", "--data_dir", "/datasets/superglue/RTE", "--method", "pt2", "--epochs", "20",
            "--batch_size", "2", "--gradient_checkpointing", "true"]


def test_documented_dry_run_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/slurm.md (or the README it is merged into) quotes the real --dry-run output."""
    root = Path(__file__).resolve().parents[2]
    docs = [p for p in (root / "docs" / "slurm.md", root / "README.md")
            if p.is_file() and "Running on a Slurm cluster" in p.read_text()]
    if not docs:
        pytest.skip("no 'Running on a Slurm cluster' section found")
    assert launch.main(DOC_ARGS) == 0
    out = capsys.readouterr().out
    assert any(out in p.read_text() for p in docs), "re-paste the --dry-run output into the docs"
