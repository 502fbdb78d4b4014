"""The end-of-run summary a user reads: final and best dev metrics, parameter ratio, where things are."""
from __future__ import annotations

from typing import Any

from megaprompt.engine.distributed import is_rank0, log


def report(run: Any, metrics: dict[str, Any]) -> None:
    if not is_rank0():
        return
    if metrics.get("preempted"):
        log.info("stopped for preemption at step %d; resume with --resume auto (the requeued job does)",
                 metrics["step"])
        return
    fmt = lambda m: ", ".join(f"{k} {v:.2f}" for k, v in m.items() if k != "step")  # noqa: E731
    lines = [
        f"task {metrics['task']} | method {metrics['method']} | backbone {metrics['backbone']}",
        f"final dev: {fmt(metrics['final'])}",
        f"best dev:  {fmt(metrics['best'])} (step {metrics['best']['step']})",
        f"trainable params: {metrics['trainable_params']:,} of {metrics['total_params']:,} "
        f"({100 * metrics['trainable_ratio']:.3f}%)",
        f"steps {metrics['steps']} in {metrics['wall_s']:.1f} s ({metrics['samples_per_s']:.1f} samples/s, "
        f"{run.world} ranks, {run.precision})",
        f"outputs: {run.out}/metrics.json, {run.out}/export/",
        f"tensorboard --logdir {run.out}/tb",
    ]
    log.info("done\n  %s", "\n  ".join(lines))
