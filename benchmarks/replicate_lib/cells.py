"""The cell plan and the execution of one cell.

A *cell* is (task, row, configuration, seed); it trains into its own run directory
``<results>/runs/<task>/<row>/<lr=..,prompt_len=..,seed=..>/`` (names from ``jobs.sweep.element_name``, the
project's sweep naming) on the ``select/`` data (train + the carved selection dev), then the export chosen
by that run (best selection-dev step) is scored on the official dev split with ``megaprompt.predict``.
A cell is finished when its ``cell.json`` exists; a run whose ``metrics.json`` exists is not retrained.
Run directories are bulky and not committed; the committed ``replicate_cells.json`` is the *ledger*: a cell
whose run directory is gone (a fresh clone) but whose record is in the ledger, with the same training flags,
counts as finished with that record, so the table survives a new checkout and is never rewritten smaller.

Selection: a row with a search space first runs every configuration at the first seed; once all have
finished, the one with the best *selection-dev* metric (ties: the earlier one) is chosen and its other
seeds are planned. Rows with ``inherit`` reuse the chosen configuration of another row (the ablations
reuse pt2's), so their cells wait for that choice. MPT-2 (``mpt2``) first trains, per seed, one multi-task
cell (task ``multi``: a shared prompt and one head per task on the union of the MPT-2 tasks, with the pt2
configuration most of them chose), then continues each task from its export with that task's pt2 choice.
"""
from __future__ import annotations

import json
import math
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

from .specs import MPT2_TASKS, MULTI, ROWS, Row, TaskSpec, row_flags

CELL_JSON = "cell.json"


def portable(text: str) -> str:
    """Paths written relative to the repository root (the committed files must not name this machine)."""
    root = Path(__file__).resolve().parents[2]
    return text.replace(f"{root}/", "").replace(f"{root.parent}/", "../")


@dataclass
class Cell:
    task: str
    row: str
    params: dict[str, str]      # the searched flags (lr, prompt_len)
    seed: int
    stage: str                  # search | final | multi (MPT-2's multi-task stage)
    run_dir: Path
    extra: dict[str, str] = field(default_factory=dict)     # flags outside the run name (MPT-2's init_from)
    record: dict[str, Any] | None = field(default=None, repr=False)   # the ledger's, when the run dir is gone

    @property
    def finished(self) -> bool:
        return (self.run_dir / CELL_JSON).is_file() or self.record is not None

    def result(self) -> dict[str, Any] | None:
        if (self.run_dir / CELL_JSON).is_file():
            return json.loads((self.run_dir / CELL_JSON).read_text())
        return self.record


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
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)   # portable run_dir -> committed record


def load_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The committed cell records (``replicate_cells.json``) by portable run directory; {} when absent."""
    if not path.is_file():
        return {}
    return {r["run_dir"]: r for r in json.loads(path.read_text())}


def _run_dir(ctx: Context, task: str, row: str, params: dict[str, str], seed: int) -> Path:
    return ctx.results / "runs" / task / row / element_name({**params, "seed": str(seed)})


def new_cell(ctx: Context, task: str, row: str, params: dict[str, str], seed: int, stage: str,
             extra: dict[str, str] | None = None) -> Cell:
    """A planned cell, carrying its ledger record when that record was trained with the same flags."""
    cell = Cell(task, row, dict(params), seed, stage, _run_dir(ctx, task, row, params, seed), dict(extra or {}))
    rec = ctx.ledger.get(portable(str(cell.run_dir)))
    if rec is not None and rec.get("flags") == json.loads(portable(json.dumps(train_flags(ctx, cell)))):
        cell.record = rec
    return cell


def _select_metric(cell: Cell, spec: TaskSpec) -> float | None:
    """The cell's best selection-dev metric (the trainer's ``metrics.json``, else the ledger), None until trained."""
    m = cell.run_dir / "metrics.json"
    if m.is_file():
        return float(json.loads(m.read_text())["best"][spec.metric])
    return float(cell.record["select_dev"][spec.metric]) if cell.record else None


def mpt2_tasks(ctx: Context) -> list[str]:
    return [t for t in MPT2_TASKS if t in ctx.tasks]


def mpt2_shared(ctx: Context) -> dict[str, str] | None:
    """The multi-task stage's configuration: the pt2 configuration chosen on most MPT-2 tasks (a tie: the
    earliest task's); None until pt2's search has finished on all of them."""
    picks = [chosen(ctx, t, ROWS["pt2"]) for t in mpt2_tasks(ctx)]
    if not picks or any(p is None for p in picks):
        return None
    keys = [json.dumps(p, sort_keys=True) for p in picks]
    return json.loads(max(keys, key=lambda k: (keys.count(k), -keys.index(k))))


def chosen(ctx: Context, task: str, row: Row) -> dict[str, str] | None:
    """The selected configuration of ``row`` on ``task`` (None while its search is unfinished). MPT-2
    continues with pt2's choice on the task, at the multi-task stage's prompt length (the prompt it loads)."""
    if row.name == "mpt2":
        shared, pick = mpt2_shared(ctx), chosen(ctx, task, ROWS["pt2"])
        return None if shared is None or pick is None else pick | {"prompt_len": shared["prompt_len"]}
    if row.inherit:
        return chosen(ctx, task, ROWS[row.inherit])
    best: tuple[float, dict[str, str]] | None = None
    for params in ctx.search.get(row.name, row.search):
        cell = new_cell(ctx, task, row.name, params, ctx.seeds[0], "search")
        score = _select_metric(cell, ctx.tasks[task]) if cell.finished else None
        if score is None:
            return None
        if best is None or score > best[0]:
            best = (score, dict(params))
    return best[1] if best else None


def plan_row(ctx: Context, task: str, row: Row) -> list[Cell | Waiting]:
    """Cells of one row on one task, in run order (search at the first seed, then the other seeds)."""
    if row.needs_mlm and not ctx.has_mlm:
        return [Waiting(task, row.name, f"n/a: {ctx.backbone} has no pretrained MLM head (a verbalizer would "
                                        "score label words with a randomly initialised one)")]
    out: list[Cell | Waiting] = []
    if not row.inherit:
        for params in ctx.search.get(row.name, row.search):
            out.append(new_cell(ctx, task, row.name, params, ctx.seeds[0], "search"))
    pick = chosen(ctx, task, row)
    if row.name == "mpt2" and len(mpt2_tasks(ctx)) < 2:
        return [Waiting(task, row.name, f"needs at least two of {', '.join(MPT2_TASKS)} among this run's tasks")]
    if pick is None:
        on = ", ".join(mpt2_tasks(ctx)) if row.name == "mpt2" else task
        who = f"waits for {row.inherit}'s" if row.inherit else f"other seeds wait for {row.name}'s"
        out.append(Waiting(task, row.name, f"{who} selection on {on}"))
        return out
    shared = mpt2_shared(ctx) if row.name == "mpt2" else None    # not None here: pick needs it
    for s in (ctx.seeds if row.inherit else ctx.seeds[1:]):
        extra = {}
        if shared is not None:       # the seed's multi-task stage first, then this task continues from it
            multi = new_cell(ctx, MULTI, row.name, shared, s, "multi")
            out.append(multi)        # planned (and reported) even when finished: plan() keeps it once
            if not multi.finished:
                continue
            extra = {"init_from": str(multi.run_dir / "export"), "reparam": "none"}
        out.append(new_cell(ctx, task, row.name, pick, s, "final", extra))
    return out


def plan(ctx: Context, order: list[tuple[tuple[str, ...], tuple[str, ...]]]) -> list[Cell | Waiting]:
    """Every cell in priority order, each once: ``order`` is a list of (tasks, rows) groups."""
    out: list[Cell | Waiting] = []
    seen: set[tuple[str, str]] = set()
    dirs: set[Path] = set()      # MPT-2's multi-task cell is planned by each of its tasks
    for tasks, rows in order:
        for task in tasks:
            for name in rows:
                row = ROWS[name]
                if task not in ctx.tasks or (task, name) in seen or (row.tasks and task not in row.tasks):
                    continue
                seen.add((task, name))
                for e in plan_row(ctx, task, row):
                    if isinstance(e, Waiting) or e.run_dir not in dirs:
                        out.append(e)
                        dirs.update([e.run_dir] if isinstance(e, Cell) else [])
    return _defer_multi(out)


def _defer_multi(out: list[Cell | Waiting]) -> list[Cell | Waiting]:
    """An unfinished MPT-2 multi-task stage moves after every continuation the earlier seeds already allow, so
    an interrupted table holds whole seeds (a multi-task run and its tasks' continuations) rather than three
    multi-task runs and no continuation."""
    for cell in [e for e in out if isinstance(e, Cell) and e.stage == "multi" and not e.finished]:
        at = out.index(cell)
        out.pop(at)
        earlier = [i for i, e in enumerate(out) if isinstance(e, Cell) and e.row == cell.row
                   and e.stage in ("final", "multi") and e.seed < cell.seed]
        out.insert(max(at, earlier[-1] + 1) if earlier else at, cell)
    return out


def train_flags(ctx: Context, cell: Cell) -> dict[str, str]:
    """Every training flag of the cell except where it writes (the full configuration, for the report)."""
    if cell.stage == "multi":
        return multi_flags(ctx, cell)
    spec = ctx.tasks[cell.task]
    return {"backbone": ctx.backbone, "task": cell.task, "data_dir": ctx.data[cell.task]["select_dir"],
             "max_seq_len": str(spec.max_seq_len), "epochs": str(spec.epochs), "batch_size": str(spec.batch_size),
             "eval_every": "0", "keep_checkpoints": "1", "seed": str(cell.seed),
             **row_flags(ROWS[cell.row], ctx.n_layers), **cell.params, **cell.extra}


def multi_flags(ctx: Context, cell: Cell) -> dict[str, str]:
    """MPT-2's multi-task stage: the MPT-2 tasks' selection splits with their own sequence lengths, mixed in
    proportion to their sizes (the paper trains on the union), for as many steps as their pt2 cells together."""
    tasks = mpt2_tasks(ctx)
    specs = [ctx.tasks[t] for t in tasks]
    steps = sum(math.ceil(ctx.data[t]["train"] / s.batch_size * s.epochs) for t, s in zip(tasks, specs))
    return {"backbone": ctx.backbone, "task": ",".join(tasks),
            "data_dir": ",".join(f"{t}={ctx.data[t]['select_dir']}" for t in tasks),
            "task_settings": ";".join(f"{t}:max_seq_len={s.max_seq_len}" for t, s in zip(tasks, specs)),
            "mixing": "proportional", "max_steps": str(steps), "batch_size": str(specs[0].batch_size),
            "eval_every": "0", "keep_checkpoints": "1", "seed": str(cell.seed),
            **row_flags(ROWS["pt2"], ctx.n_layers), **cell.params}


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
    """Train (unless ``metrics.json`` exists), predict on the official dev split, write ``cell.json``. MPT-2's
    multi-task stage is only trained: its export is what the tasks' continuations start from.

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
    official = {"metrics": {}, "examples": 0}
    wall_pred = 0.0
    if cell.stage != "multi":
        wall_pred = _call(predict_argv(ctx, cell), log)
        official = json.loads((cell.run_dir / "official" / f"{cell.task}_dev_metrics.json").read_text())
    trained = json.loads(metrics.read_text())
    shutil.rmtree(cell.run_dir / "checkpoints", ignore_errors=True)   # resume state; the export stays
    record = {"task": cell.task, "row": cell.row, "stage": cell.stage, "seed": cell.seed, "params": cell.params,
              "flags": train_flags(ctx, cell), "train_argv": train_argv(ctx, cell),
              "predict_argv": predict_argv(ctx, cell) if cell.stage != "multi" else [],
              "select_dev": trained["best"], "official_dev": official["metrics"],
              "official_examples": official["examples"], "steps": trained.get("steps"),
              "trainable_params": trained.get("trainable_params"),
              "wall_train_s": round(wall_train if wall_train is not None else trained.get("wall_s", 0.0), 1),
              "wall_predict_s": round(wall_pred, 1), "executor": ctx.executor, "host": socket.gethostname()}
    atomic_write_text(cell.run_dir / CELL_JSON, json.dumps(record, indent=1) + "\n")
    return record
