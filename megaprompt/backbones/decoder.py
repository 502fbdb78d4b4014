"""Decoder LLMs: llama, mistral, qwen2, qwen3, glm4 (``model.layers[i].self_attn``).

Their attention applies RoPE to real keys *before* calling ``ALL_ATTENTION_FUNCTIONS``; prefix keys are
concatenated afterwards, so they carry no rotary phase and real tokens keep positions 0..L-1 (the KV-cache
route would shift them by prompt_len). Grouped-query attention: prefixes are stored per *kv* head.

Position ids: decoders number positions 0..L-1 by default, so left padding would shift real tokens' RoPE
phases; ``model_inputs`` counts only attended positions instead (as HF generate does). Right padding: unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from megaprompt.backbones.base import BackboneAdapter


class DecoderAdapter(BackboneAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3", "glm4")
    is_decoder = True

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in self.layers(model)]

    def model_inputs(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                     inputs_embeds: torch.Tensor | None = None,
                     token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().model_inputs(attention_mask, input_ids, inputs_embeds, None)   # no segment ids
        out["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return out
