"""``StepTotals``: the training loss of one optimizer step, kept on the device, checked once per step.

Calling ``loss.item()`` or an all-reduce of a host flag after every micro-batch stalls a GPU's stream once per
micro-batch. Instead the micro-batch losses are summed on the device (``add``: no host sync, no collective)
and ``finish`` runs, once per optimizer step and *before* the step's boundary ``engine.step()`` (DeepSpeed
only updates the weights there), one all-reduce (SUM) of that sum and one ``.item()``. A sum is finite iff
every term is, so the reduced value tells every rank at once whether any micro-batch on any rank had a
non-finite loss: all ranks stop together, before a NaN reaches the weights, naming the step. The value is
also the global mean loss (over ``grad_accum`` micro-batches x ``world`` ranks) that the log reports.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megaprompt.engine.distributed import collective_device


class StepTotals:
    def __init__(self, device: torch.device, grad_accum: int, world: int) -> None:
        self.device, self.grad_accum, self.world = device, grad_accum, world
        self._sum: torch.Tensor | None = None     # () float32 on ``device``
        self.micro = 0

    def add(self, loss: torch.Tensor) -> None:
        """Accumulate one micro-batch loss (stays on its device: no host sync)."""
        term = loss.detach().float()
        self._sum = term if self._sum is None else self._sum + term
        self.micro += 1

    def finish(self, step: int) -> float:
        """The step's global mean loss; raises ``FloatingPointError`` (on every rank) if any was non-finite.
        One collective and one host sync. Resets for the next step."""
        if self._sum is None:
            raise RuntimeError("StepTotals.finish() before any add()")
        total = self._sum.reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            total = total.to(collective_device())
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        value = float(total.item()) / (self.micro * self.world)
        micro = self.micro
        self._sum, self.micro = None, 0
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite training loss at step {step} (mean over {micro} micro-batch(es) x {self.world} "
                f"rank(s): {value}); lower --lr or use --precision fp32/bf16")
        return value


__all__ = ["StepTotals"]
