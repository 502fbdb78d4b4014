"""Submit training runs and sweeps to Slurm: ``python -m megaprompt.launch [launcher options] -- [train args]``.

Launcher options (resources, sweep, preemption) come first; everything after ``--`` is handed to
``megaprompt/train.py`` unchanged, shell-quoted (an unknown option before ``--`` is an error, so a typo
in a Slurm option is not silently passed to training). Examples::

    # one run, 2 nodes x 8 GPUs
    python -m megaprompt.launch --output_dir runs/rte --nodes 2 --gpus_per_node 8 --time 12:00:00 \
        -- --ds_config ds_configs/zero3.json --backbone meta-llama/Llama-2-13b-hf --task rte
    # a sweep as ONE job array, at most 4 elements at a time
    python -m megaprompt.launch --output_dir sweeps/rte --sweep lr=5e-3,1e-2 seed=1,2,3 --throttle 4 -- ...
    # look before submitting
    python -m megaprompt.launch ... --dry-run

Writes ``<output_dir>/job.sbatch``, ``<output_dir>/logs/%j.out`` (``%A_%a.out`` for arrays) and, for
sweeps, ``<output_dir>/manifest.json`` (array index -> parameters and element directory). Elements whose
``metrics.json`` exists are left out of the ``--array`` list on resubmission. Rendering lives in
``jobs/render.py`` / ``jobs/template.sbatch``, grids in ``jobs/sweep.py``. Slurm options follow
sbatch(1): https://slurm.schedmd.com/sbatch.html ; arrays: https://slurm.schedmd.com/job_array.html .
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

try:
    from jobs import render as jr, sweep as js
except ImportError:  # running from an install that did not ship jobs/: use the source tree's
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs import render as jr, sweep as js

from megaprompt.cli import ArgumentParser  # noqa: E402

log = logging.getLogger("megaprompt.launch")

SCRIPT_NAME = "job.sbatch"
DEFAULT_ENTRY = "megaprompt/train.py"


@dataclass
class Plan:
    """What a launch writes and submits."""

    spec: jr.JobSpec
    script_path: Path
    script: str
    manifest_path: Path | None = None
    manifest: dict[str, Any] | None = None
    nothing_to_do: str | None = None          # reason, when every element already finished
    notes: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m megaprompt.launch", allow_abbrev=False,
        description="Render and submit sbatch scripts for megaprompt training runs and sweeps. "
                    "Arguments after `--` go to the training entry point.")
    p.add_argument("--output_dir", required=True,
                   help="run directory, or the sweep directory (one sub-directory per element)")
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="grid axes, e.g. --sweep lr=5e-3,1e-2 prompt_len=8,32 seed=1,2,3")
    g.add_argument("--sweep_file", help="YAML grid: {key: [values]} (optionally under `grid:`)")
    g.add_argument("--throttle", type=int, help="at most this many array elements run at once (%%K)")
    r = p.add_argument_group("resources (sbatch options)")
    r.add_argument("--job_name", default="megaprompt")
    r.add_argument("--partition")
    r.add_argument("--account")
    r.add_argument("--qos")
    r.add_argument("--time", help="time limit, e.g. 04:00:00 or 1-00:00:00")
    r.add_argument("--nodes", type=int, default=1)
    r.add_argument("--gpus_per_node", type=int, default=0)
    r.add_argument("--ntasks_per_node", type=int,
                   help="ranks per node (default: gpus_per_node, or 1 on CPU-only jobs)")
    r.add_argument("--cpus_per_task", type=int)
    r.add_argument("--mem", help="memory per node, e.g. 64G")
    r.add_argument("--constraint")
    r.add_argument("--sbatch_extra", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH line, e.g. --sbatch_extra=--mail-type=END (repeatable)")
    r.add_argument("--env_setup", action="append", default=[], metavar="LINE",
                   help="shell line run before training, verbatim, e.g. 'module load cuda' (repeatable)")
    q = p.add_argument_group("preemption")
    q.add_argument("--signal_seconds", type=int, default=120,
                   help="send SIGUSR1 this many seconds before the time limit (0: off)")
    q.add_argument("--max_requeues", type=int, default=3)
    x = p.add_argument_group("execution")
    x.add_argument("--workdir", help="directory the job runs in (default: the current directory)")
    x.add_argument("--python", default="python", help="interpreter on the compute nodes")
    x.add_argument("--entry", default=DEFAULT_ENTRY, help="training script, relative to --workdir")
    x.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the rendered script and manifest; write and submit nothing")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: launcher options before, training arguments after."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _flag_names(args: Sequence[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}


def make_plan(ns: argparse.Namespace, train_args: Sequence[str]) -> Plan:
    """Everything but the side effects: rendered script, manifest, what is left to run."""
    clash = _flag_names(train_args) & js.RESERVED_KEYS
    if clash:
        raise ValueError(f"--{sorted(clash)[0]} is set by the launcher; give it before `--` or drop it")
    slurm = jr.SlurmOptions(
        job_name=ns.job_name, partition=ns.partition, account=ns.account, qos=ns.qos, time=ns.time,
        nodes=ns.nodes, gpus_per_node=ns.gpus_per_node, ntasks_per_node=ns.ntasks_per_node,
        cpus_per_task=ns.cpus_per_task, mem=ns.mem, constraint=ns.constraint,
        signal_seconds=ns.signal_seconds, max_requeues=ns.max_requeues, throttle=ns.throttle,
        sbatch_extra=list(ns.sbatch_extra), env_setup=list(ns.env_setup))
    out = Path(os.path.abspath(ns.output_dir))
    workdir = os.path.abspath(ns.workdir) if ns.workdir else os.getcwd()
    train_cmd = [ns.python, "-u", ns.entry, *train_args]
    log_dir = str(out / "logs")
    grid: dict[str, list[str]] = {}
    if ns.sweep_file:
        grid = js.load_grid_file(ns.sweep_file)
    if ns.sweep:
        grid = js.merge_grids(grid, js.parse_sweep_args(ns.sweep))
    script_path = out / SCRIPT_NAME
    if not grid:
        if ns.throttle is not None:
            raise ValueError("--throttle only applies to sweeps")
        spec = jr.JobSpec(slurm, workdir, log_dir, train_cmd, output_dir=str(out))
        plan = Plan(spec, script_path, jr.render(spec))
        if (out / js.METRICS).is_file():
            plan.nothing_to_do = f"{out / js.METRICS} exists: the run already finished"
        return plan
    both = set(grid) & _flag_names(train_args)
    if both:
        raise ValueError(f"--{sorted(both)[0]} is both swept and given as a training argument")
    sweep = js.expand(grid, out)
    pending = sweep.pending
    array = js.array_spec([e.index for e in pending], ns.throttle) if pending else ""
    spec = jr.JobSpec(slurm, workdir, log_dir, train_cmd, elements=sweep.elements,
                      array=array or js.array_spec([e.index for e in sweep.elements], ns.throttle))
    old = js.read_manifest(out) or {}
    manifest = js.manifest_dict(sweep, array, train_args, old.get("submissions", []))
    plan = Plan(spec, script_path, jr.render(spec), out / js.MANIFEST, manifest)
    done = len(sweep.elements) - len(pending)
    if done:
        plan.notes.append(f"{done} of {len(sweep.elements)} elements already finished (metrics.json): "
                          f"skipped; submitting --array={array or '(none)'}")
    if not pending:
        plan.nothing_to_do = f"all {len(sweep.elements)} sweep elements already finished"
    return plan


def sbatch(script_path: Path) -> str:
    """Submit with ``sbatch --parsable`` and return the job id."""
    proc = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def dry_run_text(plan: Plan) -> str:
    parts = [f"### {plan.script_path}\n{plan.script}"]
    if plan.manifest is not None:
        parts.append(f"### {plan.manifest_path}\n{js.dumps_manifest(plan.manifest)}")
    if plan.nothing_to_do:
        parts.append(f"### nothing to submit: {plan.nothing_to_do}\n")
    return "\n".join(parts)


def execute(plan: Plan) -> str | None:
    """Write the script (and manifest), submit it; returns the job id, or None if nothing to do."""
    for note in plan.notes:
        log.info(note)
    if plan.nothing_to_do:
        log.info("nothing to submit: %s", plan.nothing_to_do)
        return None
    Path(plan.spec.log_dir).mkdir(parents=True, exist_ok=True)
    plan.script_path.write_text(plan.script)
    if plan.manifest is not None and plan.manifest_path is not None:
        js.write_manifest(plan.manifest_path.parent, plan.manifest)
    job_id = sbatch(plan.script_path)
    if plan.manifest is not None and plan.manifest_path is not None:
        plan.manifest["submissions"].append({"job_id": job_id, "array": plan.manifest["array"]})
        js.write_manifest(plan.manifest_path.parent, plan.manifest)
    log.info("submitted job %s%s; logs: %s; tensorboard --logdir %s", job_id,
             f" (--array={plan.spec.array})" if plan.spec.is_array else "", plan.spec.log_dir,
             plan.script_path.parent)
    return job_id


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    launcher_argv, train_args = split_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns, unknown = parser.parse_known_args(launcher_argv)
    if unknown:
        parser.error(f"unrecognized launcher arguments: {' '.join(unknown)} "
                     "(training arguments go after `--`)")
    try:
        plan = make_plan(ns, train_args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if ns.dry_run:
        sys.stdout.write(dry_run_text(plan))
        return 0
    try:
        job_id = execute(plan)
    except (RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1
    if job_id is not None:
        sys.stdout.write(job_id + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
