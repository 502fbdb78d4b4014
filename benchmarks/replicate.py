"""Reproduce the P-Tuning v2 paper's comparison (Liu et al., ACL 2022, Tables 2-4) at small scale, resumably.

    python benchmarks/replicate.py --plan              # print every cell, finished or not, and exit
    python benchmarks/replicate.py                     # run what is left (priority order), then report
    python benchmarks/replicate.py --quick             # CB + SST-2, ft/lester/pt2, 1 seed: < 15 min on 2 cores
    python benchmarks/replicate.py --report_only       # rewrite replicate.{json,md,png} from finished cells

Rows: ft, lester, pt2, pt2+MLP, pt2 top/bottom half of the layers, MPT-2 (a multi-task stage, then per-task continuation), the
verbalizer head (only where the backbone has a pretrained MLM head). Columns: RTE, CB, COPA, WSC, SST-2,
CoNLL-2003, CoNLL-2004, SQuAD v1.1. Each cell (task x row x configuration x seed) is a run directory under
``<results>/runs/``; finished cells are skipped, so repeated invocations fill the table and an interrupted
one loses at most the cell in progress. Selection uses a dev split carved from train; reported numbers are
``megaprompt.predict`` on the official dev split (see ``replicate_lib/splits.py``).
Executors: ``local`` (one ``python -m megaprompt.train`` process per cell), ``deepspeed`` (the launcher,
``--ranks`` processes), ``slurm`` (one ``megaprompt.launch`` job per cell; rerun to collect and continue).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from replicate_lib import report, splits  # noqa: E402
from replicate_lib.cells import Cell, Context, Waiting, load_ledger, plan, run_cell  # noqa: E402
from replicate_lib.specs import FULL_SEARCH, QUICK_SEARCH, QUICK_TASKS, ROWS, TASKS, quick  # noqa: E402

log = logging.getLogger("replicate")
STEM = "replicate"          # <results>/replicate.{json,md,png} and replicate_cells.json (the ledger)
CHEAP = ("sst2", "rte", "cb", "copa", "wsc")
MAIN_ROWS = ("ft", "lester", "pt2")
ABLATIONS = ("pt2_mlp", "pt2_top", "pt2_bottom", "verbalizer", "mpt2")
# Priority: the main rows on the cheap columns, ablations on RTE/SST-2, the expensive columns, the rest.
ORDER = [(CHEAP, MAIN_ROWS), (("rte", "sst2"), ABLATIONS), (("conll03", "conll04", "squad"), MAIN_ROWS),
         (("conll03",), ABLATIONS), (tuple(TASKS), tuple(ROWS))]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"), help="default: ../shared/data")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="results folder (--quick: <results>/quick)")
    p.add_argument("--quick", action="store_true", help=f"tasks {','.join(QUICK_TASKS)}, ft/lester/pt2, 1 seed, "
                   "one configuration each, subsampled")
    p.add_argument("--search", choices=("small", "full"), default="small",
                   help="prompt methods: small = lr 1e-2/3e-2 at P=16; full = also P=32 at lr 1e-2")
    p.add_argument("--plan", action="store_true", help="print the cells and exit")
    p.add_argument("--report_only", action="store_true", help="write the outputs from finished cells only")
    p.add_argument("--tasks", default="", help="comma list (default: all; --quick: cb,sst2)")
    p.add_argument("--rows", default="", help=f"comma list of {','.join(ROWS)} (default: all; --quick: "
                   "ft,lester,pt2)")
    p.add_argument("--seeds", default="", help="comma list (default 1,2,3; --quick: 1)")
    p.add_argument("--train_n", type=int, default=-1, help="override every task's training units (tests)")
    p.add_argument("--epochs", type=float, default=0, help="override every task's epochs (tests)")
    p.add_argument("--executor", choices=("local", "deepspeed", "slurm"), default="local")
    p.add_argument("--ranks", type=int, default=2, help="deepspeed executor: processes per cell")
    p.add_argument("--master_port", type=int, default=30300)
    p.add_argument("--slurm_args", default="", help="launcher options for --executor slurm, e.g. '--partition gpu'")
    p.add_argument("--stop_after_min", type=float, default=0, help="launch no new cell after this (0 = no limit)")
    p.add_argument("--max_cells", type=int, default=0, help="run at most this many cells (0 = no limit)")
    return p.parse_args(argv)


def _names(value: str, known: dict, default: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(x for x in value.split(",") if x) or default
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"--{what} {bad[0]!r}: expected one of {', '.join(known)}")
    return names


def _has_pretrained_mlm(backbone: str) -> bool:
    """Whether the checkpoint's safetensors hold MLM-head weights (all-MiniLM-L6-v2's do not)."""
    from safetensors import safe_open

    from megaprompt.backbones.load import TINY_CONFIGS, resolve
    if backbone in TINY_CONFIGS:
        return False
    try:
        files = list(Path(resolve(backbone)).glob("*.safetensors"))
    except Exception:       # a hub name: cannot look without downloading; the trainer warns if it is missing
        return True
    for f in files:
        with safe_open(str(f), "pt") as fh:
            if any(k.startswith(("cls.predictions", "lm_head", "lm_predictions")) for k in fh.keys()):
                return True
    return False


def build_context(ns: argparse.Namespace) -> Context:
    """Every task of the mode whose data is present (``--tasks`` only narrows what runs, never what the report
    keeps); a requested task without data is an error."""
    from megaprompt.backbones.load import load_config
    data_dir = Path(ns.data_dir)
    wanted = _names(ns.tasks, TASKS, (), "tasks")       # names first
    _names(ns.rows, ROWS, (), "rows")
    if not data_dir.is_dir():
        raise ValueError(f"--data_dir {data_dir}: no such folder (expected the layout of ../shared/data)")
    results = Path(ns.results).resolve() / ("quick" if ns.quick else "")     # one spelling: the ledger keys
    for t in wanted:
        if not (data_dir / TASKS[t].src).is_dir():
            raise ValueError(f"--data_dir {data_dir}: no {TASKS[t].src}/ for task {t}")
    names = [t for t in TASKS if t in wanted or (t in (QUICK_TASKS if ns.quick else TASKS)
                                                 and (data_dir / TASKS[t].src).is_dir())]
    specs = {t: quick(TASKS[t]) if ns.quick else TASKS[t] for t in names}
    if ns.train_n >= 0 or ns.epochs > 0:
        from dataclasses import replace
        specs = {t: replace(s, train_n=s.train_n if ns.train_n < 0 else ns.train_n, epochs=ns.epochs or s.epochs)
                 for t, s in specs.items()}
    data = {t: splits.derive(s.fmt, data_dir / s.src, results / "data" / t, s.sel_n, s.train_n, s.eval_n)
            for t, s in specs.items()}
    seeds = tuple(int(x) for x in ns.seeds.split(",") if x) or ((1,) if ns.quick else (1, 2, 3))
    return Context(results=results, data=data, tasks=specs, backbone=ns.backbone,
                   n_layers=load_config(ns.backbone).num_hidden_layers, has_mlm=_has_pretrained_mlm(ns.backbone),
                   seeds=seeds, search=_search(ns), executor=ns.executor,
                   ranks=ns.ranks, master_port=ns.master_port, slurm_args=ns.slurm_args,
                   ledger=load_ledger(results / f"{STEM}_cells.json"))


def _search(ns: argparse.Namespace) -> dict[str, tuple[dict[str, str], ...]]:
    """Per-row search spaces overriding ``Row.search``."""
    if ns.quick:
        return dict(QUICK_SEARCH)
    return dict(FULL_SEARCH) if ns.search == "full" else {}


def _order(ns: argparse.Namespace) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The report's plan: every row of the mode (``--rows`` may add rows; it narrows only what runs)."""
    rows = set(MAIN_ROWS if ns.quick else ROWS) | set(_names(ns.rows, ROWS, (), "rows"))
    return [(tasks, tuple(r for r in group if r in rows)) for tasks, group in ORDER]


def _header(ctx: Context, ns: argparse.Namespace) -> str:
    load = os.getloadavg()
    return (f"# P-Tuning v2 replication table{' (--quick)' if ns.quick else ''}\n\n"
            f"Backbone `{ctx.backbone}` ({ctx.n_layers} layers), seeds {list(ctx.seeds)}, executor "
            f"`{ctx.executor}`, {os.cpu_count()} CPUs (load {load[0]:.1f} when written). Produced by "
            f"`python benchmarks/replicate.py{' --quick' if ns.quick else ''}`. Hyperparameters are chosen on a "
            "dev split carved from each training set (disjoint, seeded); every number below is the chosen "
            "export scored with `megaprompt.predict` on the official dev split, which is never used for "
            "selection. SQuAD v1.1 has no train set here: its dev articles are split into a training half and "
            "an evaluation half (see Data). Ablation rows reuse pt2's chosen configuration.")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ns = parse(argv)
    try:
        ctx = build_context(ns)
        order = _order(ns)
        run_tasks = _names(ns.tasks, TASKS, tuple(ctx.tasks), "tasks")
        run_rows = _names(ns.rows, ROWS, MAIN_ROWS if ns.quick else tuple(ROWS), "rows")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t0, ran, failed = time.monotonic(), 0, set()
    while not (ns.plan or ns.report_only):
        todo = [e for e in plan(ctx, order) if isinstance(e, Cell) and not e.finished
                and (e.task in run_tasks or e.stage == "multi") and e.row in run_rows
                and str(e.run_dir) not in failed]
        if not todo or (ns.max_cells and ran >= ns.max_cells) or \
                (ns.stop_after_min and time.monotonic() - t0 > 60 * ns.stop_after_min):
            break
        cell = todo[0]
        log.info("cell %s / %s / %s seed %s (%d left)", cell.task, cell.row, cell.params, cell.seed, len(todo))
        try:
            rec = run_cell(ctx, cell)
        except Exception as err:      # a failed cell is recorded in its log; the others still run
            log.error("cell %s failed: %s (log: %s.log)", cell.run_dir, err, cell.run_dir)
            failed.add(str(cell.run_dir))
            continue
        if rec is None:               # submitted to Slurm
            failed.add(str(cell.run_dir))
            continue
        ran += 1
        if cell.task in ctx.tasks:
            metric = ctx.tasks[cell.task].metric
            log.info("  -> official %s %.2f (selection dev %.2f), %.0f s", metric, rec["official_dev"][metric],
                     rec["select_dev"][metric], rec["wall_train_s"] + rec["wall_predict_s"])
        else:                         # MPT-2's multi-task stage
            log.info("  -> multi-task selection dev mean %.2f, %.0f s", rec["select_dev"]["mean"], rec["wall_train_s"])
        report.write(ctx, plan(ctx, order), ctx.results, STEM, _header(ctx, ns))
    entries = plan(ctx, order)
    if ns.plan:
        for e in entries:
            if isinstance(e, Waiting):
                print(f"waiting   {e.task:8s} {e.row:11s} {e.why}")
            else:
                state = "done" if e.finished else "todo"
                cfg = ",".join(f"{k}={v}" for k, v in e.params.items())
                print(f"{state:9s} {e.task:8s} {e.row:11s} {e.stage:6s} seed={e.seed} {cfg}  {e.run_dir}")
        return 0
    report.write(ctx, entries, ctx.results, STEM, _header(ctx, ns))
    log.info("wrote %s/replicate.{json,md,png}; %d cells run now, %d failed or submitted", ctx.results, ran,
             len(failed))
    return 1 if failed and ctx.executor != "slurm" else 0


if __name__ == "__main__":
    sys.exit(main())
