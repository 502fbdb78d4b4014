"""tools/sweep_summary.py on metrics.json files written by the test: best config per task, mean ± std
over seeds, CSV/JSON/markdown/PNG outputs, and missing/failed elements listed, never dropped."""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

from jobs import sweep as js

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "sweep_summary.py"


def _metrics(task: str, acc: float) -> dict:
    return {"task": task, "method": "pt2", "primary_metric": "accuracy",
            "final": {"accuracy": acc - 1, "macro_f1": 10.0}, "best": {"accuracy": acc, "macro_f1": 10.0,
                                                                      "step": 5}}


def _make_sweep(root: Path) -> tuple[Path, dict[str, float]]:
    sweep = js.expand(js.parse_sweep_args(["lr=5e-3,1e-2", "prompt_len=8,32", "seed=1,2,3"]), root)
    acc: dict[str, float] = {}
    for e in sweep.elements:
        d = Path(e.output_dir)
        if e.index == 1:           # missing: never started
            continue
        d.mkdir(parents=True)
        if e.index == 4:           # incomplete: started, no metrics.json
            (d / "train.log").write_text("killed\n")
            continue
        if e.index == 7:           # failed: unreadable metrics
            (d / "metrics.json").write_text("{not json")
            continue
        value = 60 + 10 * (e.params["lr"] == "1e-2") + (e.params["prompt_len"] == "32") + int(e.params["seed"])
        acc[e.name] = value
        (d / "metrics.json").write_text(json.dumps(_metrics("rte", value)))
    js.write_manifest(root, js.manifest_dict(sweep, "0-11", ["--task", "rte"]))
    return root, acc


def test_summary_outputs(tmp_path: Path) -> None:
    sweep_dir, acc = _make_sweep(tmp_path / "sw")
    proc = subprocess.run([sys.executable, str(TOOL), str(sweep_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = sweep_dir / "summary"
    for name in ("summary.md", "summary.csv", "summary.json", "elements.csv", "metric_vs_hparams.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "metric_vs_hparams.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((out / "summary.json").read_text())
    assert s["metric"] == "accuracy" and s["source"] == "best"
    best = s["best"]["rte"]
    assert best["params"] == {"lr": "1e-2", "prompt_len": "32"}
    vals = [acc[f"lr=1e-2,prompt_len=32,seed={k}"] for k in (1, 2, 3)]
    assert best["values"] == vals and best["seeds"] == ["1", "2", "3"]
    assert abs(best["mean"] - statistics.fmean(vals)) < 1e-9 and abs(best["std"] - statistics.stdev(vals)) < 1e-9
    # lr=5e-3, prompt_len=8 lost seed 2 (missing): mean over the 2 remaining seeds
    c = next(c for c in s["configs"] if c["params"] == {"lr": "5e-3", "prompt_len": "8"})
    assert c["n"] == 2 and c["seeds"] == ["1", "3"]
    statuses = {e["index"]: e["status"] for e in s["elements"]}
    assert statuses[1] == "missing" and statuses[4] == "incomplete" and statuses[7] == "failed"
    assert sum(v == "ok" for v in statuses.values()) == 9 and len(statuses) == 12
    assert {e["index"] for e in s["missing"]} == {1, 4} and [e["index"] for e in s["failed"]] == [7]
    md = (out / "summary.md").read_text()
    assert "| rte | 1e-2 | 32 | 73.00 ± 1.00 | 3 |" in md
    assert "Missing or failed elements (3)" in md and "never started" in md and "unusable metrics.json" in md
    assert f"tensorboard --logdir {sweep_dir}" in md
    rows = list(csv.DictReader(open(out / "elements.csv")))
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok", "missing", "incomplete", "failed"}
    best_rows = [r for r in csv.DictReader(open(out / "summary.csv")) if r["best"] == "1"]
    assert [(r["lr"], r["prompt_len"]) for r in best_rows] == [("1e-2", "32")]


def test_final_source_and_no_manifest(tmp_path: Path) -> None:
    sweep_dir, _ = _make_sweep(tmp_path / "sw")
    (sweep_dir / "manifest.json").unlink()
    proc = subprocess.run([sys.executable, str(TOOL), str(sweep_dir), "--source", "final", "--metric", "accuracy",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["best"]["rte"]["mean"] == 72.0         # final = best - 1
    # without a manifest the never-started element is unknown; the incomplete and failed ones are listed
    statuses = sorted(e["status"] for e in s["elements"] if e["status"] != "ok")
    assert statuses == ["failed", "incomplete"]


def test_nothing_finished_exits_nonzero(tmp_path: Path) -> None:
    sweep = js.expand({"seed": ["1", "2"]}, tmp_path)
    js.write_manifest(tmp_path, js.manifest_dict(sweep, "0-1", []))
    proc = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    s = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert len(s["missing"]) == 2 and s["configs"] == []
