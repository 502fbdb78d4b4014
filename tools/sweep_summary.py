#!/usr/bin/env python
"""Summarise a sweep: ``python tools/sweep_summary.py <sweep_dir> [--metric M] [--source best|final]``.

Reads ``<sweep_dir>/manifest.json`` (written by ``python -m megaprompt.launch``; without one, every
sub-directory named ``k=v,...`` is an element) and each element's ``metrics.json``; writes into
``<sweep_dir>/summary/`` (or ``--out``):

* ``summary.md`` / ``summary.csv`` / ``summary.json``: per task, every configuration (the swept
  parameters except ``seed``) with mean ± sample std over its seeds, and the best configuration;
* ``elements.csv``: every element with its status and value;
* ``metric_vs_hparams.png``: the metric against each swept hyperparameter (one panel per key).

Elements without a usable ``metrics.json`` are listed as missing / failed in every output, never dropped.
The metric defaults to ``metrics.json``'s ``primary_metric`` (else its first numeric entry); higher is
better unless ``--lower_is_better``. Every element logs to ``<element>/tb``, so
``tensorboard --logdir <sweep_dir>`` compares all runs. Plotting uses matplotlib's Agg backend
(https://matplotlib.org/stable/users/explain/figure/backends.html).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from a checkout

from jobs.sweep import read_manifest  # noqa: E402
from megaprompt.cli import ArgumentParser  # noqa: E402

log = logging.getLogger("sweep_summary")
SEED_KEYS = ("seed",)


@dataclass
class Element:
    index: int
    dir: str
    params: dict[str, str]
    status: str = "missing"          # ok | missing | incomplete | failed
    reason: str = ""
    task: str = ""
    value: float | None = None


@dataclass
class Config:
    task: str
    params: dict[str, str]
    values: list[float] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def _parse_name(name: str) -> dict[str, str] | None:
    parts = [p.partition("=") for p in name.split(",")]
    if not parts or any(not sep or not k for k, sep, _ in parts):
        return None
    return {k: v for k, _, v in parts}


def load_elements(sweep_dir: Path) -> tuple[list[Element], list[str]]:
    """Elements (from the manifest, else from directory names) and the swept keys in grid order."""
    manifest_path = sweep_dir / "manifest.json"
    m = read_manifest(sweep_dir)           # one-line error naming the file when malformed
    if m is not None:
        try:
            elements = [Element(int(e["index"]), str(e["dir"]), {k: str(v) for k, v in e["params"].items()})
                        for e in m["elements"]]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{manifest_path}: element without index/dir/params ({type(err).__name__}: "
                             f"{err})") from None
        return elements, list(m.get("grid") or (elements[0].params if elements else {}))
    log.warning("%s has no manifest.json: elements are the k=v,... sub-directories", sweep_dir)
    elements = []
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        params = _parse_name(d.name)
        if params is not None:
            elements.append(Element(len(elements), d.name, params))
    keys: list[str] = []
    for e in elements:
        keys += [k for k in e.params if k not in keys]
    return elements, keys


def read_metrics(sweep_dir: Path, elements: list[Element], metric: str | None, source: str) -> str:
    """Fill status/value/task of every element; returns the metric name used."""
    for e in elements:
        path = sweep_dir / e.dir / "metrics.json"
        if not path.is_file():
            e.status = "incomplete" if (sweep_dir / e.dir).is_dir() else "missing"
            e.reason = ("no metrics.json (still running, preempted or crashed: see logs/)"
                        if e.status == "incomplete" else "never started (no element directory)")
            continue
        try:
            m = json.loads(path.read_text())
            block = m[source]
            name = metric or m.get("primary_metric") or next(
                k for k, v in block.items() if k != "step" and isinstance(v, (int, float)))
            metric = metric or name
            value = float(block[metric])
            if not math.isfinite(value):
                raise ValueError(f"{metric} is {value}")
        except (ValueError, KeyError, TypeError, StopIteration) as exc:
            e.status, e.reason = "failed", f"unusable metrics.json: {type(exc).__name__}: {exc}"
            continue
        e.status, e.value = "ok", value
        e.task = str(m.get("task") or e.params.get("task") or "?")
    return metric or "?"


def group(elements: list[Element]) -> list[Config]:
    configs: dict[tuple[str, tuple[tuple[str, str], ...]], Config] = {}
    for e in elements:
        if e.status != "ok" or e.value is None:
            continue
        params = {k: v for k, v in e.params.items() if k not in SEED_KEYS}
        key = (e.task, tuple(params.items()))
        c = configs.setdefault(key, Config(e.task, params))
        c.values.append(e.value)
        c.seeds.append(next((e.params[k] for k in SEED_KEYS if k in e.params), ""))
    return list(configs.values())


def best_per_task(configs: list[Config], lower: bool) -> dict[str, Config]:
    best: dict[str, Config] = {}
    for c in configs:
        cur = best.get(c.task)
        if cur is None or (c.mean < cur.mean if lower else c.mean > cur.mean):
            best[c.task] = c
    return best


def _fmt(c: Config) -> str:
    return f"{c.mean:.2f} ± {c.std:.2f}"


def write_markdown(path: Path, sweep_dir: Path, metric: str, source: str, keys: list[str],
                   configs: list[Config], best: dict[str, Config], elements: list[Element]) -> None:
    hp = [k for k in keys if k not in SEED_KEYS]
    ok = sum(e.status == "ok" for e in elements)
    lines = [f"# Sweep summary: `{sweep_dir}`", "",
             f"Metric: **{metric}** ({source} dev value from each element's metrics.json), mean ± sample "
             f"std over seeds. {ok} of {len(elements)} elements have metrics.", "",
             "## Best configuration per task", "",
             "| task | " + " | ".join(hp) + f" | {metric} | seeds |",
             "|---|" + "---|" * len(hp) + "---|---|"]
    for task, c in sorted(best.items()):
        lines.append(f"| {task} | " + " | ".join(c.params.get(k, "") for k in hp)
                     + f" | {_fmt(c)} | {len(c.values)} |")
    lines += ["", "## All configurations", "",
              "| task | " + " | ".join(hp) + f" | {metric} | n | values |",
              "|---|" + "---|" * len(hp) + "---|---|---|"]
    for c in sorted(configs, key=lambda c: (c.task, -c.mean)):
        vals = ", ".join(f"{v:.2f}" for v in c.values)
        lines.append(f"| {c.task} | " + " | ".join(c.params.get(k, "") for k in hp)
                     + f" | {_fmt(c)} | {len(c.values)} | {vals} |")
    bad = [e for e in elements if e.status != "ok"]
    lines += ["", f"## Missing or failed elements ({len(bad)})", ""]
    if bad:
        lines += ["| index | element | status | reason |", "|---|---|---|---|"]
        lines += [f"| {e.index} | `{e.dir}` | {e.status} | {e.reason} |" for e in bad]
    else:
        lines.append("None.")
    lines += ["", f"Compare the runs: `tensorboard --logdir {sweep_dir}` (each element logs to "
              "`<element>/tb`).", ""]
    path.write_text("\n".join(lines))


def write_csvs(out: Path, keys: list[str], configs: list[Config], best: dict[str, Config],
               elements: list[Element]) -> None:
    hp = [k for k in keys if k not in SEED_KEYS]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *hp, "mean", "std", "n", "seeds", "values", "best"])
        for c in sorted(configs, key=lambda c: (c.task, -c.mean)):
            w.writerow([c.task, *(c.params.get(k, "") for k in hp), f"{c.mean:.6g}", f"{c.std:.6g}",
                        len(c.values), " ".join(c.seeds), " ".join(f"{v:.6g}" for v in c.values),
                        int(best.get(c.task) is c)])
    with open(out / "elements.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "dir", *keys, "task", "status", "value", "reason"])
        for e in elements:
            w.writerow([e.index, e.dir, *(e.params.get(k, "") for k in keys), e.task, e.status,
                        "" if e.value is None else f"{e.value:.6g}", e.reason])


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot(path: Path, metric: str, keys: list[str], elements: list[Element]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hp = [k for k in keys if k not in SEED_KEYS] or keys[:1]
    ok = [e for e in elements if e.status == "ok"]
    tasks = sorted({e.task for e in ok}) or ["?"]
    fig, axes = plt.subplots(1, len(hp), figsize=(4.2 * len(hp), 3.4), squeeze=False)
    for ax, key in zip(axes[0], hp):
        levels = list(dict.fromkeys(e.params.get(key, "") for e in elements))
        nums = _as_numbers(levels)
        xpos = {lv: (nums[i] if nums else i) for i, lv in enumerate(levels)}
        for task in tasks:
            pts = [(xpos[e.params.get(key, "")], e.value) for e in ok if e.task == task]
            if not pts:
                continue
            ax.scatter(*zip(*pts), alpha=0.6, label=task)
            means = sorted((x, statistics.fmean(v for xx, v in pts if xx == x)) for x in {p[0] for p in pts})
            ax.plot(*zip(*means), marker="_")
        if nums and min(nums) > 0 and max(nums) / min(nums) >= 20:
            ax.set_xscale("log")
        if not nums:
            ax.set_xticks(range(len(levels)), levels, rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if len(tasks) > 1:
        axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{metric} vs swept hyperparameters ({len(ok)}/{len(elements)} elements)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(sweep_dir: Path, out: Path, metric: str | None = None, source: str = "best",
              lower: bool = False) -> dict[str, Any]:
    elements, keys = load_elements(sweep_dir)
    metric = read_metrics(sweep_dir, elements, metric, source)
    configs = group(elements)
    best = best_per_task(configs, lower)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(out / "summary.md", sweep_dir, metric, source, keys, configs, best, elements)
    write_csvs(out, keys, configs, best, elements)
    plot(out / "metric_vs_hparams.png", metric, keys, elements)

    def cfg(c: Config) -> dict[str, Any]:
        return {"task": c.task, "params": c.params, "mean": c.mean, "std": c.std, "n": len(c.values),
                "seeds": c.seeds, "values": c.values}
    summary = {
        "sweep_dir": str(sweep_dir), "metric": metric, "source": source, "lower_is_better": lower,
        "keys": keys, "best": {t: cfg(c) for t, c in sorted(best.items())},
        "configs": [cfg(c) for c in configs], "elements": [asdict(e) for e in elements],
        "missing": [asdict(e) for e in elements if e.status in ("missing", "incomplete")],
        "failed": [asdict(e) for e in elements if e.status == "failed"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for e in elements:
        if e.status != "ok":
            log.warning("element %d %s: %s (%s)", e.index, e.dir, e.status, e.reason)
    for t, c in sorted(best.items()):
        log.info("best %s: %s %s=%s over %d seed(s)", t, c.params, metric, _fmt(c), len(c.values))
    log.info("wrote %s/{summary.md,summary.csv,summary.json,elements.csv,metric_vs_hparams.png}", out)
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = ArgumentParser(prog="sweep_summary", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--metric", help="metric name (default: metrics.json's primary_metric)")
    p.add_argument("--source", choices=("best", "final"), default="best",
                   help="best: best dev value during training; final: dev value at the last step")
    p.add_argument("--lower_is_better", action="store_true")
    p.add_argument("--out", type=Path, help="output directory (default: <sweep_dir>/summary)")
    a = p.parse_args(argv)
    if not a.sweep_dir.is_dir():
        p.error(f"{a.sweep_dir} is not a directory")
    try:
        s = summarize(a.sweep_dir, a.out or a.sweep_dir / "summary", a.metric, a.source, a.lower_is_better)
    except (ValueError, OSError) as err:
        p.error(str(err))
    return 0 if s["configs"] else 1


if __name__ == "__main__":
    sys.exit(main())
