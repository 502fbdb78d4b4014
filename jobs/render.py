"""Render sbatch scripts from ``jobs/template.sbatch``.

Everything user-supplied that lands in the shell part of the script is passed through ``shlex.quote``
(https://docs.python.org/3/library/shlex.html#shlex.quote), so a value such as ``$(touch x)``, a
backtick or a quote stays a literal string. ``#SBATCH`` lines are parsed by sbatch, not by the shell
(https://slurm.schedmd.com/sbatch.html, "batch script" section): their values are checked against a
conservative character set instead, and a newline anywhere is refused (it would start a new script line).
``--env_setup`` lines are the one deliberate exception: they are the user's own shell (module load,
venv activation) and are copied verbatim.

Rendering is deterministic: no timestamps and no paths other than those the caller passes in.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from jobs.sweep import Element

TEMPLATE = Path(__file__).with_name("template.sbatch")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Characters allowed in #SBATCH option values (time specs, memory, constraint expressions, paths).
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%+=/&|!*()\[\]{}~^-]+$")
PORT_BASE = 20000
PORT_SPAN = 20000


@dataclass
class SlurmOptions:
    """Resources and Slurm behaviour of one job (see sbatch(1) for each option)."""

    job_name: str = "megaprompt"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    ntasks_per_node: int | None = None     # default: gpus_per_node, or 1 on CPU-only jobs
    cpus_per_task: int | None = None
    mem: str | None = None
    constraint: str | None = None
    signal_seconds: int = 120              # SIGUSR1 this many seconds before the time limit; 0 = off
    max_requeues: int = 3
    throttle: int | None = None            # array parallelism limit (%K)
    sbatch_extra: list[str] = field(default_factory=list)
    env_setup: list[str] = field(default_factory=list)

    @property
    def tasks_per_node(self) -> int:
        if self.ntasks_per_node is not None:
            return self.ntasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    def validate(self) -> None:
        """Raise ValueError on a value that sbatch would misread or that could break the script."""
        for name in ("job_name", "partition", "account", "qos", "time", "mem", "constraint"):
            value = getattr(self, name)
            if value is not None:
                check_sbatch_value(name, value)
        for name in ("nodes", "max_requeues", "signal_seconds"):
            if getattr(self, name) < (1 if name == "nodes" else 0):
                raise ValueError(f"{name} must be >= {1 if name == 'nodes' else 0}")
        if self.gpus_per_node < 0:
            raise ValueError("gpus_per_node must be >= 0")
        for name in ("ntasks_per_node", "cpus_per_task", "throttle"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        for line in self.sbatch_extra:
            if _has_control(line) or not line.startswith("-"):
                raise ValueError(f"bad extra #SBATCH line {line!r}: one option such as --mail-type=END")
        for line in self.env_setup:
            if "\0" in line:
                raise ValueError("NUL byte in an --env_setup line")


@dataclass
class JobSpec:
    """What one sbatch script runs: a single training run (``output_dir``) or a job array
    (``elements`` + ``array``)."""

    slurm: SlurmOptions
    workdir: str
    log_dir: str
    train_cmd: list[str]                   # interpreter + entry point + shared training arguments
    output_dir: str | None = None
    elements: list[Element] | None = None
    array: str | None = None

    @property
    def is_array(self) -> bool:
        return self.elements is not None


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_sbatch_value(name: str, value: str) -> str:
    if not value or not SBATCH_VALUE.match(value):
        raise ValueError(
            f"{name}={value!r}: #SBATCH values may only contain letters, digits and _.,:@%+=/&|!*()[]{{}}~^- "
            "(no spaces, quotes, $ or newlines)")
    return value


def quote_args(args: Sequence[str]) -> str:
    """Shell-quote every argument; start a new indented line before each ``--flag`` for readability."""
    lines: list[list[str]] = []
    for a in args:
        if not lines or a.startswith("--"):
            lines.append([])
        lines[-1].append(shlex.quote(a))
    return "\n".join("    " + " ".join(words) for words in lines)


def sbatch_lines(spec: JobSpec) -> list[str]:
    """The ``#SBATCH`` header, in a fixed order."""
    s = spec.slurm
    opts: list[tuple[str, object]] = [("job-name", s.job_name)]
    for key, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                       ("time", s.time)):
        if value is not None:
            opts.append((key, value))
    opts += [("nodes", s.nodes), ("ntasks-per-node", s.tasks_per_node)]
    if s.gpus_per_node > 0:
        opts.append(("gpus-per-node", s.gpus_per_node))
    if s.cpus_per_task is not None:
        opts.append(("cpus-per-task", s.cpus_per_task))
    if s.mem is not None:
        opts.append(("mem", s.mem))
    if s.constraint is not None:
        opts.append(("constraint", s.constraint))
    log_name = "%A_%a.out" if spec.is_array else "%j.out"
    opts.append(("output", check_sbatch_value("log_dir", f"{spec.log_dir.rstrip('/')}/{log_name}")))
    opts.append(("open-mode", "append"))      # a requeued run appends to the same log
    if s.signal_seconds > 0:
        opts.append(("signal", f"B:USR1@{s.signal_seconds}"))
    opts.append(("requeue", None))
    if spec.is_array:
        if not spec.array:
            raise ValueError("a job array needs its --array spec")
        opts.append(("array", check_sbatch_value("array", spec.array)))
    lines = [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in opts]
    lines += [f"#SBATCH {line}" for line in s.sbatch_extra]
    return lines


def select_block(spec: JobSpec) -> str:
    """Shell that sets OUTPUT_DIR and ELEMENT_ARGS for this job (or array element)."""
    if not spec.is_array:
        if not spec.output_dir:
            raise ValueError("a single job needs output_dir")
        return f"OUTPUT_DIR={shlex.quote(spec.output_dir)}\nELEMENT_ARGS=()"
    assert spec.elements is not None
    arms = []
    for e in spec.elements:
        args = " ".join(shlex.quote(a) for a in e.train_args())
        arms.append(f"    {e.index}) OUTPUT_DIR={shlex.quote(e.output_dir)}; ELEMENT_ARGS=({args}) ;;")
    arms.append("    *) log \"no sweep element for array index '${SLURM_ARRAY_TASK_ID:-unset}'\"; exit 2 ;;")
    return "\n".join(['case "${SLURM_ARRAY_TASK_ID:-}" in', *arms, "esac"])


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}`` placeholders; a placeholder without a value is an error."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder {{{{{m.group(1)}}}}} has no value")
        return values[m.group(1)]
    return PLACEHOLDER.sub(sub, template)


def render(spec: JobSpec, template: str | None = None) -> str:
    """The complete sbatch script for ``spec``."""
    s = spec.slurm
    s.validate()
    if not spec.train_cmd:
        raise ValueError("empty training command")
    srun_opts = f"--cpus-per-task={s.cpus_per_task} " if s.cpus_per_task is not None else ""
    values = {
        "sbatch": "\n".join(sbatch_lines(spec)),
        "env_setup": "\n".join(s.env_setup) if s.env_setup else "# (none)",
        "workdir": shlex.quote(spec.workdir),
        "ntasks_per_node": str(s.tasks_per_node),
        "train_cmd": quote_args(spec.train_cmd),
        "select": select_block(spec),
        "max_requeues": str(s.max_requeues),
        "port_base": str(PORT_BASE),
        "port_span": str(PORT_SPAN),
        "srun_opts": srun_opts,
    }
    text = template if template is not None else TEMPLATE.read_text()
    return fill(text, values)
