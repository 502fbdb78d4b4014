"""``replicate.json`` / ``replicate.md`` / ``replicate.png`` (+ ``replicate_cells.json``) from finished cells.

``replicate.json``: ``{task: {row: {"metric", "mean", "std", "seeds", "config", ...}}}``, metrics in percent on
the official dev split (SQuAD: the evaluation half), mean and sample std over the seeds that finished for
the selected configuration (std 0.0 with one seed; ``n_seeds`` says how many).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from megaprompt.files import atomic_write_text

from .cells import Cell, Context, Waiting, chosen, portable
from .specs import PAPER, ROWS, TASKS


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "seeds": [round(v, 2) for v in values], "n_seeds": len(values)}


def summarise(ctx: Context, entries: list[Cell | Waiting]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(table, every finished cell's record). Ledger records outside this plan (other tasks or rows, a changed
    spec) are carried over unchanged, so an invocation on a subset never drops finished cells."""
    cells = [e for e in entries if isinstance(e, Cell)]
    records = [c.result() | {"run_dir": portable(str(c.run_dir))} for c in cells if c.finished]
    have = {r["run_dir"] for r in records}
    records += [r for key, r in ctx.ledger.items() if key not in have]
    table: dict[str, Any] = {}
    for task in ctx.tasks:
        spec = ctx.tasks[task]
        for name, row in ROWS.items():
            pick = chosen(ctx, task, row)
            done = [c.result() for c in cells if c.task == task and c.row == name and c.params == pick
                    and c.finished]
            if not pick or not done:
                continue
            done.sort(key=lambda r: r["seed"])
            entry = {"metric": spec.metric, **_stats([r["official_dev"][spec.metric] for r in done])}
            entry["seed_ids"] = [r["seed"] for r in done]
            for extra in spec.extra:
                entry[extra] = _stats([r["official_dev"][extra] for r in done])
            entry["select_dev"] = [round(r["select_dev"][spec.metric], 2) for r in done]
            entry["config"] = dict(done[0]["flags"]) | {"seed": None, "data": ctx.data[task]}
            entry["wall_s"] = [round(r["wall_train_s"] + r["wall_predict_s"], 1) for r in done]
            table.setdefault(task, {})[name] = entry
    return table, records


def _mean_std(stats: dict[str, Any]) -> str:
    """"mean ± std", or the mean alone for one seed (a sample std needs two; the JSON keeps 0.0)."""
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}" if stats["n_seeds"] > 1 else f"{stats['mean']:.1f}"


def _cell_text(entry: dict[str, Any] | None, extra: str | None) -> str:
    if not entry:
        return "–"
    text = _mean_std(entry)
    if extra and extra in entry:
        text += f" / {_mean_std(entry[extra])}"
    return text + f" ({entry['n_seeds']})"


def _majority(task: str, data: dict[str, Any]) -> str:
    """Accuracy of always predicting the official dev split's most frequent label (classification tasks)."""
    from collections import Counter

    from megaprompt.tasks import get_task
    spec = get_task(task, data_dir=data["official_dir"])
    if spec.head not in ("cls", "mc"):
        return "–"
    labels = Counter(ex["label"] for ex in spec.load(data["official_dir"], "dev"))
    return f"{100 * max(labels.values()) / sum(labels.values()):.1f}"


def _placeholder(ctx: Context, name: str, task: str) -> str:
    """What an empty table cell says: n/a (cannot run here) or – (not run)."""
    row = ROWS[name]
    if row.tasks and task not in row.tasks:
        return "–"
    return "n/a" if row.needs_mlm and not ctx.has_mlm else "–"


def markdown(ctx: Context, table: dict[str, Any], records: list[dict[str, Any]], entries: list[Any],
             header: str) -> str:
    tasks = list(ctx.tasks)
    cols = [f"{TASKS[t].column} ({TASKS[t].metric}{' / ' + '/'.join(TASKS[t].extra) if TASKS[t].extra else ''})"
            for t in tasks]
    lines = [header, "", "## Results (official dev; mean ± sample std over seeds, (n) = seeds finished)", "",
             "| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(tasks)]
    waits = {(w.task, w.row): w.why for w in entries if isinstance(w, Waiting)}
    for name, row in ROWS.items():
        texts = []
        for t in tasks:
            e = table.get(t, {}).get(name)
            texts.append(_cell_text(e, TASKS[t].extra[0] if TASKS[t].extra else None) if e
                         else _placeholder(ctx, name, t))
        lines.append(f"| {row.label} | " + " | ".join(texts) + " |")
    lines += ["", "## Next to the paper (this run, primary metric, mean ± std [seeds] / the paper's RoBERTa-large "
              "dev number; – = not run here or not in the paper)", "",
              "| row | " + " | ".join(TASKS[t].column for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, row in ROWS.items():
        texts = []
        for t in tasks:
            e = table.get(t, {}).get(name)
            ours = f"{_mean_std(e)} [{e['n_seeds']}]" if e else _placeholder(ctx, name, t)
            paper = PAPER.get(t, {}).get(name)
            texts.append(f"{ours} / {paper}" if paper is not None else ours)
        lines.append(f"| {row.label} | " + " | ".join(texts) + " |")
    lines += ["", "## Not run", ""] + [f"- {t} / {r}: {why}" for (t, r), why in sorted(waits.items())]
    lines += ["", "## Data (units: examples; sentences for CoNLL; questions for SQuAD)", "",
              "| task | train | selection dev (carved from train) | official dev | majority class on official dev "
              "| note |", "|---|---|---|---|---|---|"]
    for t in tasks:
        d = ctx.data[t]
        lines.append(f"| {t} | {d['train']} | {d['select_dev']} | {d['official_dev']} | {_majority(t, d)} | "
                     f"{d.get('note', '')} |")
    lines += ["", "## Every finished cell (selection dev = best step on the carved split; official = predict)", "",
              "| task | row | stage | config | seed | selection dev | official dev | train s | predict s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in records:      # MPT-2's multi-task stage: the mean of its tasks' selection metrics, no official run
        m = TASKS[r["task"]].metric if r["task"] in TASKS else "mean"
        cfg = ",".join(f"{k}={v}" for k, v in r["params"].items())
        official = f"{r['official_dev'][m]:.1f}" if m in r["official_dev"] else "–"
        lines.append(f"| {r['task']} | {r['row']} | {r['stage']} | {cfg} | {r['seed']} | "
                     f"{r['select_dev'][m]:.1f} | {official} | {r['wall_train_s']:.0f} | "
                     f"{r['wall_predict_s']:.0f} |")
    total = sum(r["wall_train_s"] + r["wall_predict_s"] for r in records)
    lines += ["", f"{len(records)} cells, {total / 60:.1f} min of cell wall time in all."]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = [t for t in TASKS if t in table]
    rows = [r for r in ROWS if any(r in table[t] for t in tasks)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [k + i * width for k, t in enumerate(tasks) if r in table[t]]
        ys = [table[t][r]["mean"] for t in tasks if r in table[t]]
        es = [table[t][r]["std"] for t in tasks if r in table[t]]
        ax.bar(xs, ys, width, yerr=es, label=r, capsize=2)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(tasks))], [TASKS[t].column for t in tasks])
    ax.set_ylabel("official dev metric (%)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write(ctx: Context, entries: list[Cell | Waiting], out: Path, stem: str, header: str) -> dict[str, Any]:
    table, records = summarise(ctx, entries)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", portable(json.dumps(table, indent=1)) + "\n")
    atomic_write_text(out / f"{stem}_cells.json", portable(json.dumps(records, indent=1)) + "\n")
    atomic_write_text(out / f"{stem}.md", portable(markdown(ctx, table, records, entries, header)))
    if table:
        plot(table, out / f"{stem}.png")
    return table
