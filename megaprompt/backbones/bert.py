"""BERT-style encoders: bert, roberta, xlm-roberta, electra (all share BERT's layer layout).

Their ``*SelfAttention`` calls ``ALL_ATTENTION_FUNCTIONS`` with the layer's ``**kwargs`` in transformers 5,
so the generic prefix attention applies. Family knowledge: the path to each layer, RoBERTa's position offset
(positions start after the padding index), and which families have a usable masked-LM head (ELECTRA's
discriminator checkpoints have none; only the separate generator does).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from megaprompt.backbones.base import BackboneAdapter


class BertAdapter(BackboneAdapter):
    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    mlm_model_types = ("bert", "roberta", "xlm-roberta")
    is_decoder = False

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.encoder.layer)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        # BertModel.encoder.layer[i].attention.self (same in RoBERTa, XLM-R, ELECTRA)
        return [layer.attention.self for layer in self.layers(model)]

    def position_limit(self, config: Any) -> int | None:
        limit = getattr(config, "max_position_embeddings", None)
        if limit and config.model_type in ("roberta", "xlm-roberta"):
            limit -= config.pad_token_id + 1     # RoBERTa positions start after the padding index
        return limit
