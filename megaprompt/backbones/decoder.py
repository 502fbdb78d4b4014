"""Decoder LLMs: llama, mistral, qwen2, qwen3, glm4 (``model.layers[i].self_attn``).

Their attention applies RoPE to real keys *before* calling ``ALL_ATTENTION_FUNCTIONS``; prefix keys are
concatenated afterwards, so they carry no rotary phase and real tokens keep positions 0..L-1 (the KV-cache
route would shift them by prompt_len). Grouped-query attention: prefixes are stored per *kv* head.
"""
from __future__ import annotations

import torch.nn as nn

from megaprompt.backbones.base import BackboneAdapter


class DecoderAdapter(BackboneAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3", "glm4")
    is_decoder = True

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in model.layers]
