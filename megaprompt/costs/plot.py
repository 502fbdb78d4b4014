"""``megaprompt-memory --plot``: memory per GPU against backbone size for FT and P-Tuning v2, ZeRO-2/3."""
from __future__ import annotations

from dataclasses import replace

from megaprompt.costs.memory import GiB, Setup, estimate_for, prepare
from megaprompt.costs.presets import PLOT_PRESETS


def series(setup: Setup, presets=PLOT_PRESETS, prompt_len: int = 16) -> dict[tuple[str, int], list[tuple]]:
    """(method, stage) -> [(preset, total params, GiB per GPU)] on ``setup``'s GPUs."""
    out: dict[tuple[str, int], list[tuple]] = {}
    for method in ("ft", "pt2"):
        for stage in (2, 3):
            s = replace(setup, stage=stage, offload_param=False)
            pts = []
            for name in presets:
                mc = prepare(name, method, s, prompt_len=prompt_len)
                pts.append((name, mc.facts.n_total, estimate_for(mc, s).gpu_total / GiB))
            out[(method, stage)] = pts
    return out


def plot_memory_vs_size(path: str, setup: Setup, gpu_gb: float = 80.0, prompt_len: int = 16) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(setup, prompt_len=prompt_len)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {("ft", 2): ("tab:red", "--", "s"), ("ft", 3): ("tab:red", "-", "o"),
              ("pt2", 2): ("tab:blue", "--", "s"), ("pt2", 3): ("tab:blue", "-", "o")}
    names = {"ft": "full fine-tuning", "pt2": "P-Tuning v2"}
    for key, pts in data.items():
        color, ls, mk = styles[key]
        xs = [p[1] / 1e9 for p in pts]
        ys = [p[2] for p in pts]
        last_fit = max((p for p in pts if p[2] <= gpu_gb), key=lambda p: p[1], default=None)
        label = f"{names[key[0]]}, ZeRO-{key[1]}"
        label += f" (fits up to {last_fit[0]})" if last_fit else " (fits none)"
        ax.plot(xs, ys, ls=ls, color=color, marker=mk, label=label)
        for x, y in zip(xs, ys):
            if y > gpu_gb:
                ax.plot([x], [y], marker="x", color="black", ms=7)
    ax.axhline(gpu_gb, color="gray", lw=1.5)
    ax.text(0.3, gpu_gb * 1.06, f"{gpu_gb:g} GiB per GPU", color="gray")
    first = data[("ft", 3)]
    for name, n, _ in first:
        ax.annotate(name, (n / 1e9, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                    textcoords="offset points", rotation=90, fontsize=7, color="dimgray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("backbone parameters (billions)")
    ax.set_ylabel("estimated memory per GPU (GiB)")
    s = setup
    ax.set_title(f"{s.nodes * s.gpus_per_node} GPUs, {s.dtype}, micro-batch {s.batch_size} x {s.seq_len}, "
                 f"{'checkpointing' if s.checkpointing else 'no checkpointing'}, no offload, prompt_len {prompt_len}"
                 "\n(x: above the GPU line)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
