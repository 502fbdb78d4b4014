"""Parameter accounting that stays right under ZeRO-3 and on the meta device.

Under ZeRO-3 a partitioned parameter's ``numel()`` is 0 on every rank; its true size is ``ds_numel``
(PEFT's ``get_nb_trainable_parameters`` does the same). Tied weights are counted once: ``parameters()``
already de-duplicates by identity. (DeepSpeed's ``model_to_params`` de-duplicates by ``data_ptr``, which
is 0 for every meta tensor, so it undercounts meta-device models.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn


def numel(p: nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def ratio(self) -> float:
        """Trainable fraction of all parameters (0-1)."""
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total, "ratio": self.ratio}


def count_parameters(model: nn.Module) -> ParamCount:
    trainable = frozen = 0
    for p in model.parameters():
        if p.requires_grad:
            trainable += numel(p)
        else:
            frozen += numel(p)
    return ParamCount(trainable, frozen)
