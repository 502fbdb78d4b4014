"""The cell plan and the execution of one cell.

A *cell* is (task, row, configuration, seed); it trains into its own run directory
``<results>/runs/<task>/<row>/<lr=..,prompt_len=..,seed=..>/`` (names from ``jobs.sweep.element_name``, the
project's sweep naming) on the ``select/`` data (train + the carved selection dev), then the export chosen
by that run (best selection-dev step) is scored on the official dev split with ``megaprompt.predict``.
A cell is finished when its ``cell.json`` exists; a run whose ``metrics.json`` exists is not retrained.

Selection: a row with a search space first runs every configuration at the first seed; once all have
finished, the one with the best *selection-dev* metric (ties: the earlier one) is chosen and its other
seeds are planned. Rows with ``inherit`` reuse the chosen configuration of another row (the ablations
reuse pt2's), so their cells wait for that choice.
"""
from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.sweep import element_name
from megaprompt.files import atomic_write_text

from .specs import ROWS, Row, TaskSpec, row_flags

CELL_JSON = "cell.json"


@dataclass
class Cell:
    task: str
    row: str
    params: dict[str, str]      # the searched flags (lr, prompt_len)
    seed: int
    stage: str                  # search | final
    run_dir: Path

    @property
    def finished(self) -> bool:
        return (self.run_dir / CELL_JSON).is_file()

    def result(self) -> dict[str, Any] | None:
        return json.loads((self.run_dir / CELL_JSON).read_text()) if self.finished else None


@dataclass
class Waiting:
    """A planned row x task that cannot run yet (pending feature, no MLM head, waits for a selection)."""

    task: str
    row: str
    why: str


@dataclass
class Context:
    results: Path
    data: dict[str, dict[str, Any]]          # task -> splits.derive sizes and folders
    tasks: dict[str, TaskSpec]
    backbone: str
    n_layers: int
    has_mlm: bool
    seeds: tuple[int, ...]
    search: dict[str, tuple[dict[str, str], ...]] = field(default_factory=dict)   # per-row override (--quick)
    executor: str = "local"                  # local | deepspeed | slurm
    ranks: int = 2
    master_port: int = 30300
    slurm_args: str = ""


def _run_dir(ctx: Context, task: str, row: str, params: dict[str, str], seed: int) -> Path:
    return ctx.results / "runs" / task / row / element_name({**params, "seed": str(seed)})


def _select_metric(cell: Cell, spec: TaskSpec) -> float | None:
    """The cell's best selection-dev metric (the trainer's ``metrics.json``), None until trained."""
    m = cell.run_dir / "metrics.json"
    return float(json.loads(m.read_text())["best"][spec.metric]) if m.is_file() else None


def chosen(ctx: Context, task: str, row: Row) -> dict[str, str] | None:
    """The selected configuration of ``row`` on ``task`` (None while its search is unfinished)."""
    if row.inherit:
        return chosen(ctx, task, ROWS[row.inherit])
    best: tuple[float, dict[str, str]] | None = None
    for params in ctx.search.get(row.name, row.search):
        cell = Cell(task, row.name, dict(params), ctx.seeds[0], "search",
                    _run_dir(ctx, task, row.name, params, ctx.seeds[0]))
        score = _select_metric(cell, ctx.tasks[task]) if cell.finished else None
        if score is None:
            return None
        if best is None or score > best[0]:
            best = (score, dict(params))
    return best[1] if best else None


def plan_row(ctx: Context, task: str, row: Row) -> list[Cell | Waiting]:
    """Cells of one row on one task, in run order (search at the first seed, then the other seeds)."""
    if row.pending:
        return [Waiting(task, row.name, row.pending)]
    if row.needs_mlm and not ctx.has_mlm:
        return [Waiting(task, row.name, f"n/a: {ctx.backbone} has no pretrained MLM head (a verbalizer would "
                                        "score label words with a randomly initialised one)")]
    out: list[Cell | Waiting] = []
    if not row.inherit:
        for params in ctx.search.get(row.name, row.search):
            out.append(Cell(task, row.name, dict(params), ctx.seeds[0], "search",
                            _run_dir(ctx, task, row.name, params, ctx.seeds[0])))
    pick = chosen(ctx, task, row)
    if pick is None:
        waits_on = row.inherit or row.name
        out.append(Waiting(task, row.name, f"other seeds wait for {waits_on}'s selection on {task}"))
        return out
    seeds = ctx.seeds if row.inherit else ctx.seeds[1:]
    out += [Cell(task, row.name, pick, s, "final", _run_dir(ctx, task, row.name, pick, s)) for s in seeds]
    return out


def plan(ctx: Context, order: list[tuple[tuple[str, ...], tuple[str, ...]]]) -> list[Cell | Waiting]:
    """Every cell in priority order: ``order`` is a list of (tasks, rows) groups."""
    out: list[Cell | Waiting] = []
    seen: set[tuple[str, str]] = set()
    for tasks, rows in order:
        for task in tasks:
            for name in rows:
                row = ROWS[name]
                if task not in ctx.tasks or (task, name) in seen or (row.tasks and task not in row.tasks):
                    continue
                seen.add((task, name))
                out += plan_row(ctx, task, row)
    return out


def train_flags(ctx: Context, cell: Cell) -> dict[str, str]:
    """Every training flag of the cell except where it writes (the full configuration, for the report)."""
    spec = ctx.tasks[cell.task]
    return {"backbone": ctx.backbone, "task": cell.task, "data_dir": ctx.data[cell.task]["select_dir"],
             "max_seq_len": str(spec.max_seq_len), "epochs": str(spec.epochs), "batch_size": str(spec.batch_size),
             "eval_every": "0", "keep_checkpoints": "1", "seed": str(cell.seed),
             **row_flags(ROWS[cell.row], ctx.n_layers), **cell.params}


def train_argv(ctx: Context, cell: Cell) -> list[str]:
    args = [x for k, v in train_flags(ctx, cell).items() for x in (f"--{k}", v)]
    if ctx.executor == "slurm":
        return args          # the launcher adds --output_dir and --resume auto itself
    args += ["--output_dir", str(cell.run_dir), "--resume", "auto"]
    if ctx.executor == "deepspeed":
        return ["deepspeed", "--num_gpus", str(ctx.ranks), "--master_port", str(ctx.master_port),
                "megaprompt/train.py", *args]
    return [sys.executable, "-m", "megaprompt.train", *args]


def predict_argv(ctx: Context, cell: Cell) -> list[str]:
    return [sys.executable, "-m", "megaprompt.predict", "--export", str(cell.run_dir / "export"),
            "--data_dir", ctx.data[cell.task]["official_dir"], "--split", "dev",
            "--output_dir", str(cell.run_dir / "official"), "--overwrite"]


def _call(argv: list[str], log: Path) -> float:
    """Run ``argv`` with its output appended to ``log``; its wall time. Raises CalledProcessError."""
    t0 = time.monotonic()
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        fh.flush()
        subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - t0


def submit_slurm(ctx: Context, cell: Cell) -> str:
    """Submit the cell's training as one Slurm job through ``megaprompt.launch``; its job id (or a note)."""
    argv = [sys.executable, "-m", "megaprompt.launch", "--output_dir", str(cell.run_dir),
            *shlex.split(ctx.slurm_args), "--", *train_argv(ctx, cell)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    atomic_write_text(cell.run_dir / "slurm.json", json.dumps({"argv": argv, "stdout": out}) + "\n")
    return out


def run_cell(ctx: Context, cell: Cell) -> dict[str, Any] | None:
    """Train (unless ``metrics.json`` exists), predict on the official dev split, write ``cell.json``.

    Under the Slurm executor an untrained cell is submitted and None is returned (a later invocation predicts
    it once its job has written ``metrics.json``)."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    log = cell.run_dir.parent / f"{cell.run_dir.name}.log"     # beside the run: the run dir is the trainer's
    metrics = cell.run_dir / "metrics.json"
    wall_train = None
    if not metrics.is_file():
        if ctx.executor == "slurm":
            if not (cell.run_dir / "slurm.json").is_file():
                submit_slurm(ctx, cell)
            return None
        wall_train = _call(train_argv(ctx, cell), log)
    wall_pred = _call(predict_argv(ctx, cell), log)
    trained = json.loads(metrics.read_text())
    official = json.loads((cell.run_dir / "official" / f"{cell.task}_dev_metrics.json").read_text())
    shutil.rmtree(cell.run_dir / "checkpoints", ignore_errors=True)   # resume state; the export stays
    record = {"task": cell.task, "row": cell.row, "stage": cell.stage, "seed": cell.seed, "params": cell.params,
              "flags": train_flags(ctx, cell), "train_argv": train_argv(ctx, cell),
              "predict_argv": predict_argv(ctx, cell),
              "select_dev": trained["best"], "official_dev": official["metrics"],
              "official_examples": official["examples"], "steps": trained.get("steps"),
              "trainable_params": trained.get("trainable_params"),
              "wall_train_s": round(wall_train if wall_train is not None else trained.get("wall_s", 0.0), 1),
              "wall_predict_s": round(wall_pred, 1), "executor": ctx.executor, "host": socket.gethostname()}
    atomic_write_text(cell.run_dir / CELL_JSON, json.dumps(record, indent=1) + "\n")
    return record
