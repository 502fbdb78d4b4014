"""The DeepSpeed engine layer: distributed setup, ds_config filling, build, loop, checkpoints, TensorBoard.

Only this package and backbone loading import ``deepspeed``.
"""
from __future__ import annotations

from megaprompt.engine.build import Run, RunError, build
from megaprompt.engine.trainer import evaluate, train

__all__ = ["Run", "RunError", "build", "evaluate", "train"]
