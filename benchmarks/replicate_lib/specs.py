"""What the table holds: tasks (columns) with their budgets, rows (methods) with their search spaces, and the
paper's published numbers (Liu et al., ACL 2022, P-Tuning v2, Tables 2-4, RoBERTa-large, dev sets).

Budgets are sized for a 2-core CPU machine (a cell is a few minutes); ``--quick`` shrinks them further.
Large training sets are subsampled (``train_n``), evaluation sets are the full official dev split (SQuAD:
a stated seeded sample of the evaluation half).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """One column. ``sel_n``/``train_n``: selection-dev and training units carved from the official train
    split (``splits.derive``); ``metric``: the primary metric (selection and table); ``extra``: also reported."""

    name: str                # megaprompt task name
    column: str              # table header
    src: str                 # folder under --data_dir
    fmt: str                 # splits.derive format
    metric: str
    sel_n: int
    train_n: int
    epochs: float
    max_seq_len: int
    batch_size: int = 16
    eval_n: int = 0          # SQuAD only: questions of the evaluation half (0 = all)
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sel_n < 1 or self.train_n < 0 or self.epochs <= 0 or self.max_seq_len < 8:
            raise ValueError(f"task spec {self.name}: sel_n >= 1, train_n >= 0, epochs > 0, max_seq_len >= 8")


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("rte", "RTE", "superglue/RTE", "superglue", "accuracy", 150, 400, 1, 128),
    TaskSpec("cb", "CB", "superglue/CB", "superglue", "accuracy", 50, 0, 2, 128, extra=("macro_f1",)),
    TaskSpec("copa", "COPA", "superglue/COPA", "superglue", "accuracy", 80, 0, 2, 48),
    TaskSpec("wsc", "WSC", "superglue/WSC", "superglue", "accuracy", 100, 0, 1, 64),
    TaskSpec("sst2", "SST-2", "glue/SST-2", "sst2", "accuracy", 300, 1000, 1, 64),
    TaskSpec("conll03", "CoNLL-2003", "conll2003", "conll03", "f1", 300, 1000, 1, 64),
    TaskSpec("conll04", "CoNLL-2004", "conll04", "conll04", "f1", 120, 0, 1, 96),
    TaskSpec("squad", "SQuAD v1.1", "squad_v1.1", "squad", "f1", 200, 600, 1, 192, eval_n=500, extra=("em",)),
)}

QUICK_TASKS = ("cb", "sst2")


def quick(spec: TaskSpec) -> TaskSpec:
    """The ``--quick`` budget: a few hundred training units, one short pass, short sequences."""
    return replace(spec, sel_n=min(spec.sel_n, 50), train_n=min(spec.train_n or 200, 200),
                   epochs=min(spec.epochs, 2), max_seq_len=min(spec.max_seq_len, 64))


@dataclass(frozen=True)
class Row:
    """One table row: fixed train flags, and either its own search space (a list of configurations, each a
    dict of train flags) or ``inherit`` (use the configuration chosen for that row, e.g. pt2's)."""

    name: str
    label: str
    flags: dict[str, str]
    search: tuple[dict[str, str], ...] = ()
    inherit: str = ""
    needs_mlm: bool = False
    tasks: tuple[str, ...] = field(default=())   # () = every task

    def __post_init__(self) -> None:
        if bool(self.search) == bool(self.inherit):
            raise ValueError(f"row {self.name}: give exactly one of search and inherit")


# Prompt methods: lr in the official scripts' range (5e-3..3e-2) at P=16 ("small", the default on CPU), plus
# P=32 at lr 1e-2 ("full": a three-point design, lr at P=16 and P at 1e-2, instead of the whole grid).
PROMPT_SEARCH = ({"lr": "1e-2", "prompt_len": "16"}, {"lr": "3e-2", "prompt_len": "16"})
PROMPT_SEARCH_FULL = (*PROMPT_SEARCH, {"lr": "1e-2", "prompt_len": "32"})
# ft: the usual 2e-5/5e-5, and 1e-4 because these budgets are 12-63 optimizer steps: at 2e-5 ft scored F1 0.0
# on both CoNLL sets and 60.0 vs 77.0 on SST-2, so a grid whose best point is its top edge was not a fair search.
FT_SEARCH = ({"lr": "2e-5"}, {"lr": "5e-5"}, {"lr": "1e-4"})
FULL_SEARCH = {"lester": PROMPT_SEARCH_FULL, "pt2": PROMPT_SEARCH_FULL}
QUICK_SEARCH = {"ft": ({"lr": "5e-5"},), "lester": ({"lr": "3e-2", "prompt_len": "16"},),
                "pt2": ({"lr": "3e-2", "prompt_len": "16"},)}

# Multi-task P-Tuning v2 (the paper's MPT-2): per seed, one shared prompt with a head per task trained on the
# union of these tasks' training sets (the "multi" stage, as many steps as their single-task runs together),
# then each task continues single-task from that export with its own pt2 budget (``cells.plan_row``).
MPT2_TASKS = ("rte", "cb", "copa", "wsc")
MULTI = "multi"          # the pseudo-task name of the multi-task stage's cells

ROWS: dict[str, Row] = {r.name: r for r in (
    Row("ft", "fine-tuning (ft)", {"method": "ft"}, search=FT_SEARCH),
    Row("lester", "prompt tuning, Lester et al. (lester)", {"method": "lester"}, search=PROMPT_SEARCH),
    Row("pt2", "P-Tuning v2 (pt2)", {"method": "pt2"}, search=PROMPT_SEARCH),
    Row("pt2_mlp", "pt2 + MLP reparameterization", {"method": "pt2", "reparam": "mlp"}, inherit="pt2"),
    Row("pt2_top", "pt2, prompts in the top half of the layers", {"method": "pt2", "prompt_layers": "last:{half}"},
        inherit="pt2"),
    Row("pt2_bottom", "pt2, prompts in the bottom half", {"method": "pt2", "prompt_layers": "first:{half}"},
        inherit="pt2"),
    Row("mpt2", "multi-task pt2 (MPT-2)", {"method": "pt2"}, inherit="pt2", tasks=MPT2_TASKS),
    Row("verbalizer", "pt2 + verbalizer head", {"method": "pt2", "head_type": "verbalizer"}, inherit="pt2",
        needs_mlm=True, tasks=("rte", "cb", "wsc", "sst2")),
)}

# Paper numbers (percent), RoBERTa-large dev: Table 2 (SuperGLUE), Table 3 (NER, QA), Table 4 (SST-2 heads).
PAPER: dict[str, dict[str, float]] = {
    "rte": {"ft": 86.6, "lester": 58.8, "pt2": 89.5},
    "cb": {"ft": 98.2, "lester": 71.4, "pt2": 100.0},
    "copa": {"ft": 94.0, "lester": 63.0, "pt2": 93.0},
    "wsc": {"ft": 63.5, "lester": 64.4, "pt2": 63.5},
    "conll03": {"ft": 92.6, "lester": 86.1, "pt2": 92.8, "mpt2": 92.8},
    "conll04": {"ft": 88.8, "lester": 76.2, "pt2": 88.4, "mpt2": 90.6},
    "squad": {"ft": 94.6, "lester": 12.0, "pt2": 94.4},
    "sst2": {"pt2": 96.3, "verbalizer": 95.8},
}


def row_flags(row: Row, n_layers: int) -> dict[str, str]:
    """The row's fixed flags with ``{half}`` filled in from the backbone depth."""
    return {k: v.format(half=max(1, n_layers // 2)) for k, v in row.flags.items()}


def describe() -> dict[str, Any]:
    """Specs as plain data, for the report."""
    return {"tasks": {k: vars(v) | {"extra": list(v.extra)} for k, v in TASKS.items()},
            "search": {"prompt": list(PROMPT_SEARCH), "prompt_full": list(PROMPT_SEARCH_FULL), "ft": list(FT_SEARCH)}}
