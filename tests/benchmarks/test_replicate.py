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
    assert isinstance(mpt, Waiting) and "multi-task" in mpt.why


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
def test_one_real_cell_reports_the_official_dev_and_is_skipped_when_done(tmp_path):
    args = [*SCRIPT, "--quick", "--tasks", "cb", "--rows", "pt2", "--train_n", "32", "--epochs", "1",
            "--results", str(tmp_path)]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=900)
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
    assert "| P-Tuning v2 (pt2) |" in (tmp_path / "quick" / "replicate.md").read_text()
    stamp = (run / CELL_JSON).stat().st_mtime_ns
    again = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300)
    assert "0 cells run now" in again.stderr and (run / CELL_JSON).stat().st_mtime_ns == stamp
