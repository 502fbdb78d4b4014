"""benchmarks/replicate.py: the carved splits, the selection rule, the plan, and one real cell end to end.

The real cell trains pretrained MiniLM P-Tuning v2 on 32 CB examples (one process, about a minute) and checks
that the table's number is the official dev split scored from the submission file, and that a second
invocation skips the finished cell. Tests that read ../shared/data skip when it is absent.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

from replicate_lib import splits  # noqa: E402
from replicate_lib.cells import CELL_JSON, Cell, Context, Waiting, chosen, plan_row  # noqa: E402
from replicate_lib.specs import FULL_SEARCH, ROWS, TASKS  # noqa: E402

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
SCRIPT = [sys.executable, str(ROOT / "benchmarks" / "replicate.py")]


def _lines(p: Path) -> list[str]:
    return [ln for ln in p.read_text().splitlines() if ln.strip()]


@needs_data
@pytest.mark.parametrize("fmt,src,train,sel", [("superglue", "superglue/RTE/train.jsonl", "train.jsonl", "val.jsonl"),
                                                ("sst2", "glue/SST-2/train.tsv", "train.tsv", "dev.tsv")])
def test_carved_selection_split_is_disjoint_sized_and_deterministic(tmp_path, fmt, src, train, sel):
    src = DATA / src
    info = splits.derive(fmt, src.parent, tmp_path / "a", sel_n=100, train_n=300)
    splits.derive(fmt, src.parent, tmp_path / "b", sel_n=100, train_n=300)
    a = tmp_path / "a" / "select"
    got_train, got_sel, orig = _lines(a / train), _lines(a / sel), _lines(src)
    if fmt == "sst2":         # header kept in both
        assert got_train[0] == got_sel[0] == orig[0]
        got_train, got_sel, orig = got_train[1:], got_sel[1:], orig[1:]
    assert (len(got_train), len(got_sel)) == (info["train"], info["select_dev"]) == (300, 100)
    # no official unit is used twice (duplicate sentences in the file may appear once on each side)
    assert not (Counter(got_train) + Counter(got_sel)) - Counter(orig)
    assert got_sel != orig[:100] and got_train != orig[100:400]       # a seeded shuffle, not the file head
    for name in (train, sel):
        assert (a / name).read_bytes() == (tmp_path / "b" / "select" / name).read_bytes()


@needs_data
def test_conll_carve_keeps_whole_sentences(tmp_path):
    info = splits.derive("conll03", DATA / "conll2003", tmp_path, sel_n=50, train_n=200)
    orig = splits._conll_sentences(DATA / "conll2003" / "eng.train")
    got_train = splits._conll_sentences(tmp_path / "select" / "eng.train")
    got_sel = splits._conll_sentences(tmp_path / "select" / "eng.testa")
    assert (len(got_train), len(got_sel), info["official_dev"]) == (200, 50, 3250)
    assert not (Counter(got_train) + Counter(got_sel)) - Counter(orig)


@needs_data
def test_squad_dev_is_split_by_article_into_disjoint_halves(tmp_path):
    info = splits.derive("squad", DATA / "squad_v1.1", tmp_path, sel_n=100, train_n=300, eval_n=400)
    docs = {name: json.loads(p.read_text())["data"] for name, p in (
        ("train", tmp_path / "select" / "train-v1.1.json"), ("sel", tmp_path / "select" / "dev-v1.1.json"),
        ("eval", tmp_path / "official" / "dev-v1.1.json"))}
    titles = {k: {a["title"] for a in v} for k, v in docs.items()}
    assert not titles["train"] & titles["sel"] and not titles["train"] & titles["eval"]
    assert not titles["sel"] & titles["eval"]
    official = json.loads((DATA / "squad_v1.1" / "dev-v1.1.json").read_text())["data"]
    assert titles["eval"] <= {a["title"] for a in official[len(official) // 2:]}
    # whole paragraphs: at least the cap, at most one paragraph over it
    assert 300 <= info["train"] < 300 + 40 and 400 <= info["official_dev"] < 400 + 40
    assert "articles 25-48" in info["note"]


def _ctx(tmp_path: Path) -> Context:
    data = {t: {"select_dir": "S", "official_dir": "O", "train": 1, "select_dev": 1, "official_dev": 1}
            for t in TASKS}
    return Context(results=tmp_path, data=data, tasks=dict(TASKS), backbone="minilm", n_layers=6,
                   has_mlm=False, seeds=(1, 2, 3))


def _finish(cell: Cell, best: float) -> None:
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "metrics.json").write_text(json.dumps({"best": {"accuracy": best}}))
    (cell.run_dir / CELL_JSON).write_text("{}")


def test_selection_uses_the_selection_dev_and_plans_the_other_seeds(tmp_path):
    ctx = _ctx(tmp_path)
    assert len(plan_row(ctx, "rte", ROWS["pt2"])) == 3      # default: lr 1e-2 / 3e-2 at P=16, then a wait
    ctx.search = dict(FULL_SEARCH)                           # --search full: also P=32
    search = plan_row(ctx, "rte", ROWS["pt2"])
    assert [c.stage for c in search[:-1]] == ["search"] * 3 and isinstance(search[-1], Waiting)
    assert chosen(ctx, "rte", ROWS["pt2"]) is None
    scores = [60.0, 70.0, 70.0]        # a tie: the earlier configuration wins
    for cell, score in zip(search[:2], scores):
        _finish(cell, score)
    assert chosen(ctx, "rte", ROWS["pt2"]) is None          # one search cell unfinished: no choice yet
    _finish(search[2], scores[2])
    assert chosen(ctx, "rte", ROWS["pt2"]) == search[1].params
    finals = [c for c in plan_row(ctx, "rte", ROWS["pt2"]) if c.stage == "final"]
    assert [(c.seed, c.params) for c in finals] == [(2, search[1].params), (3, search[1].params)]
    top = plan_row(ctx, "rte", ROWS["pt2_top"])           # the ablation inherits pt2's choice, all seeds
    assert [(c.seed, c.params) for c in top] == [(s, search[1].params) for s in (1, 2, 3)]
    from replicate_lib.cells import train_flags
    assert train_flags(ctx, top[0])["prompt_layers"] == "last:3"


def test_rows_that_cannot_run_say_why(tmp_path):
    ctx = _ctx(tmp_path)
    [verb] = plan_row(ctx, "sst2", ROWS["verbalizer"])
    assert isinstance(verb, Waiting) and "no pretrained MLM head" in verb.why
    [mpt] = plan_row(ctx, "rte", ROWS["mpt2"])
    assert isinstance(mpt, Waiting) and "pt2's selection on rte, cb, copa, wsc" in mpt.why
    ctx.tasks = {t: TASKS[t] for t in ("rte", "sst2")}
    [mpt] = plan_row(ctx, "rte", ROWS["mpt2"])
    assert isinstance(mpt, Waiting) and "at least two" in mpt.why


def test_mpt2_plans_one_multi_task_stage_per_seed_then_continues_each_task_from_its_export(tmp_path):
    from replicate_lib.cells import plan, train_flags
    ctx = _ctx(tmp_path)
    for t, n in zip(("rte", "cb", "copa", "wsc"), (400, 200, 320, 454)):
        ctx.data[t] = ctx.data[t] | {"train": n, "select_dir": f"S/{t}"}
    # pt2's choice: lr 3e-2 on rte and cb, 1e-2 on copa and wsc -> a tie, so the earliest task's (rte) is shared
    for t, best in (("rte", 1), ("cb", 1), ("copa", 0), ("wsc", 0)):
        for i, cell in enumerate(c for c in plan_row(ctx, t, ROWS["pt2"]) if isinstance(c, Cell)):
            _finish(cell, 70.0 if i == best else 60.0)
    entries = plan(ctx, [(("rte", "cb", "copa", "wsc"), ("mpt2",))])
    multi = [e for e in entries if isinstance(e, Cell)]
    assert [(c.task, c.stage, c.seed, c.params) for c in multi] == [
        ("multi", "multi", s, {"lr": "3e-2", "prompt_len": "16"}) for s in (1, 2, 3)]      # once, not per task
    flags = train_flags(ctx, multi[0])
    assert flags["task"] == "rte,cb,copa,wsc" and flags["data_dir"] == "rte=S/rte,cb=S/cb,copa=S/copa,wsc=S/wsc"
    assert flags["task_settings"] == "rte:max_seq_len=128;cb:max_seq_len=128;copa:max_seq_len=48;wsc:max_seq_len=64"
    # as many steps as the four pt2 cells together: 400/16*1 + 200/16*2 + 320/16*2 + 454/16*1, each rounded up
    assert flags["max_steps"] == str(25 + 25 + 40 + 29) and flags["mixing"] == "proportional"
    _finish(multi[0], 65.0)
    [done, cont, wait2, wait3] = plan_row(ctx, "copa", ROWS["mpt2"])
    assert (cont.stage, cont.seed, cont.params) == ("final", 1, {"lr": "1e-2", "prompt_len": "16"})   # copa's lr
    assert [(c.stage, c.seed, c.finished) for c in (done, wait2, wait3)] == [
        ("multi", 1, True), ("multi", 2, False), ("multi", 3, False)]
    # with seed 1's multi-task stage done, its four continuations run before seeds 2 and 3 start theirs
    order = [(c.task, c.seed) for c in plan(ctx, [(("rte", "cb", "copa", "wsc"), ("mpt2",))]) if not c.finished]
    assert order == [("rte", 1), ("cb", 1), ("copa", 1), ("wsc", 1), ("multi", 2), ("multi", 3)]
    cflags = train_flags(ctx, cont)
    assert cflags["init_from"] == str(multi[0].run_dir / "export") and cflags["reparam"] == "none"
    assert cflags["task"] == "copa" and cflags["data_dir"] == "S/copa" and cont.run_dir.parts[-3:-1] == ("copa", "mpt2")


@needs_data
def test_quick_plan_lists_the_quick_cells(tmp_path):
    out = subprocess.run([*SCRIPT, "--quick", "--plan", "--results", str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    todo = [ln.split()[1:4] for ln in out if ln.startswith("todo")]
    assert sorted(todo) == sorted([t, r, "search"] for t in ("cb", "sst2") for r in ("ft", "lester", "pt2"))


def test_bad_task_is_one_line_exit_2(tmp_path):
    r = subprocess.run([*SCRIPT, "--plan", "--tasks", "rte,nope", "--results", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "'nope'" in r.stderr


@needs_data
def test_real_cells_report_the_official_dev_run_mpt2_and_are_skipped_when_done(tmp_path):
    """pt2 on 32 CB and 32 RTE examples, then MPT-2: a multi-task stage on both, continued on each."""
    args = [*SCRIPT, "--quick", "--tasks", "cb,rte", "--rows", "pt2,mpt2", "--train_n", "32", "--epochs", "1",
            "--results", str(tmp_path)]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=1200)
    table = json.loads((tmp_path / "quick" / "replicate.json").read_text())
    entry = table["cb"]["pt2"]
    [run] = list((tmp_path / "quick" / "runs" / "cb" / "pt2").glob("*,seed=1"))
    record = json.loads((run / CELL_JSON).read_text())
    # the number in the table is the official dev split (56 CB examples), re-scored here from the submission
    gold = [json.loads(ln)["label"] for ln in _lines(DATA / "superglue" / "CB" / "val.jsonl")]
    preds = [json.loads(ln)["label"] for ln in _lines(run / "official" / "CB.jsonl")]
    assert record["official_examples"] == len(gold) == len(preds) == 56
    acc = 100 * sum(p == g for p, g in zip(preds, gold)) / len(gold)
    assert entry["seeds"] == [pytest.approx(acc, abs=0.01)] and entry["std"] == 0.0
    assert entry["config"]["data"]["train"] == 32 and entry["config"]["method"] == "pt2"
    assert record["wall_train_s"] > 0 and record["wall_predict_s"] > 0
    assert (tmp_path / "quick" / "replicate.png").stat().st_size > 0
    md = (tmp_path / "quick" / "replicate.md").read_text().splitlines()
    # one seed: the mean alone (a sample std needs two seeds), with its seed count
    row = next(ln for ln in md if ln.startswith("| P-Tuning v2 (pt2) |"))
    assert f"| {entry['mean']:.1f} / {entry['macro_f1']['mean']:.1f} (1) |" in row and "±" not in row
    # MPT-2: one multi-task run (both tasks' heads, the mean selection metric), then each task continued from it
    [multi] = list((tmp_path / "quick" / "runs" / "multi" / "mpt2").glob("*,seed=1"))
    mrec = json.loads((multi / CELL_JSON).read_text())
    assert mrec["flags"]["task"] == "rte,cb" and "mean" in mrec["select_dev"] and mrec["steps"] == 4
    assert {p.name for p in (multi / "export" / "heads").glob("*.json")} == {"rte.json", "cb.json"}
    for task, n in (("cb", 56), ("rte", 277)):
        [cont] = list((tmp_path / "quick" / "runs" / task / "mpt2").glob("*,seed=1"))
        crec = json.loads((cont / CELL_JSON).read_text())
        assert crec["flags"]["init_from"] == f"{multi}/export" and crec["official_examples"] == n
        assert table[task]["mpt2"]["seeds"] == [pytest.approx(crec["official_dev"]["accuracy"], abs=0.01)]
    ledger = json.loads((tmp_path / "quick" / "replicate_cells.json").read_text())
    assert sorted((r["task"], r["row"]) for r in ledger) == [("cb", "mpt2"), ("cb", "pt2"), ("multi", "mpt2"),
                                                             ("rte", "mpt2"), ("rte", "pt2")]
    stamp = (run / CELL_JSON).stat().st_mtime_ns
    again = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300)
    assert "0 cells run now" in again.stderr and (run / CELL_JSON).stat().st_mtime_ns == stamp


def _record(ctx: Context, cell: Cell, select: float, official: float) -> dict:
    from replicate_lib.cells import portable, train_flags
    return {"task": cell.task, "row": cell.row, "stage": cell.stage, "seed": cell.seed, "params": cell.params,
            "flags": json.loads(portable(json.dumps(train_flags(ctx, cell)))),
            "select_dev": {"accuracy": select}, "official_dev": {"accuracy": official}, "official_examples": 277,
            "wall_train_s": 1.0, "wall_predict_s": 1.0, "run_dir": portable(str(cell.run_dir))}


def test_the_committed_ledger_stands_in_for_missing_run_dirs_and_is_never_rewritten_smaller(tmp_path):
    """A fresh clone has replicate_cells.json but no run dirs: its cells count as finished (same flags only),
    selection reads their selection-dev metric, and a report over a subset keeps every other record."""
    from replicate_lib import report
    from replicate_lib.cells import load_ledger, plan
    ctx = _ctx(tmp_path)
    search = [c for c in plan_row(ctx, "rte", ROWS["pt2"]) if isinstance(c, Cell)]
    other = Cell("cb", "ft", {"lr": "2e-5"}, 1, "search", tmp_path / "runs" / "cb" / "ft" / "lr=2e-5,seed=1")
    records = [_record(ctx, search[0], 55.0, 52.0), _record(ctx, search[1], 61.0, 58.0), _record(ctx, other, 70, 68)]
    records[0] = records[0] | {"flags": records[0]["flags"] | {"max_seq_len": "999"}}   # trained differently
    (tmp_path / "replicate_cells.json").write_text(json.dumps(records))
    ctx.ledger = load_ledger(tmp_path / "replicate_cells.json")
    cells = [c for c in plan_row(ctx, "rte", ROWS["pt2"]) if isinstance(c, Cell)]
    assert [c.finished for c in cells] == [False, True] and chosen(ctx, "rte", ROWS["pt2"]) is None
    # the stale record is replaced once its cell reruns; then the choice is the better selection-dev config
    _finish(cells[0], 50.0)
    (cells[0].run_dir / CELL_JSON).write_text(json.dumps(_record(ctx, cells[0], 50.0, 49.0)))
    assert chosen(ctx, "rte", ROWS["pt2"]) == cells[1].params
    ctx.tasks = {"rte": TASKS["rte"]}        # a report over RTE only keeps CB's finished cell
    table, kept = report.summarise(ctx, plan(ctx, [(("rte",), ("pt2",))]))
    assert {(r["task"], r["params"].get("lr"), r["official_dev"]["accuracy"]) for r in kept} == {
        ("rte", "1e-2", 49.0), ("rte", "3e-2", 58.0), ("cb", "2e-5", 68)}
    assert table["rte"]["pt2"]["seeds"] == [58.0]
