"""TensorBoard on rank 0: ``<output_dir>/tb``.

DeepSpeed's own monitor writes no train loss for non-pipeline engines, so we log everything a user
compares runs by: loss, lr, grad norm, throughput, peak memory, dev metrics, parameter counts and hparams.
"""
from __future__ import annotations

from typing import Any

from megaprompt.engine.distributed import is_rank0


class Board:
    def __init__(self, run: Any) -> None:
        self.w = None
        if not is_rank0():
            return
        from torch.utils.tensorboard import SummaryWriter
        self.w = SummaryWriter(str(run.out / "tb"))
        c = run.counts
        self.w.add_scalar("params/trainable", c.trainable, 0)
        self.w.add_scalar("params/total", c.total, 0)
        self.w.add_scalar("params/trainable_ratio_pct", 100 * c.ratio, 0)
        self.hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in run.cfg.flat().items()}

    def train(self, step: int, loss: float, lr: float, grad_norm: float, samples_s: float, tokens_s: float,
              peak_mb: float) -> None:
        if self.w is None:
            return
        for k, v in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                     ("perf/samples_per_s", samples_s), ("perf/tokens_per_s", tokens_s), ("mem/peak_mb", peak_mb)):
            self.w.add_scalar(k, v, step)

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.w is None:
            return
        for k, v in metrics.items():
            self.w.add_scalar(f"eval/{k}", v, step)
        self.w.flush()

    def hparams(self, metrics: dict[str, Any]) -> None:
        if self.w is None:
            return
        final = {f"hparam/{k}": v for k, v in metrics["final"].items() if isinstance(v, (int, float))}
        self.w.add_hparams({k: v for k, v in self.hp.items() if v is not None}, final, run_name="hparams")

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
