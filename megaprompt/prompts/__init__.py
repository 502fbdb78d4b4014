"""Prompt methods. Each is an ``nn.Module`` with ``kind`` ("prefix" or "input") and ``forward(batch_size)``.

``build_prompt`` returns None for methods without a prompt (ft, head).
"""
from __future__ import annotations

import torch.nn as nn

from megaprompt.backbones.base import BackboneSpec
from megaprompt.prompts.config import METHODS, PromptConfig, parse_layers
from megaprompt.prompts.lester import InputPrompt
from megaprompt.prompts.prefix import DeepPrefix


def build_prompt(cfg: PromptConfig, spec: BackboneSpec) -> nn.Module | None:
    if cfg.method == "pt2":
        return DeepPrefix(cfg, spec)
    if cfg.method == "lester":
        return InputPrompt(cfg, spec)
    return None


__all__ = ["METHODS", "DeepPrefix", "InputPrompt", "PromptConfig", "build_prompt", "parse_layers"]
