"""BERT-style encoders: bert, roberta, xlm-roberta, electra (all share BERT's layer layout).

Their ``*SelfAttention`` calls ``ALL_ATTENTION_FUNCTIONS`` in transformers 5, so the generic prefix
attention applies; only the path to each layer's self-attention is family knowledge.
"""
from __future__ import annotations

import torch.nn as nn

from megaprompt.backbones.base import BackboneAdapter


class BertAdapter(BackboneAdapter):
    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    is_decoder = False

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        # BertModel.encoder.layer[i].attention.self (same in RoBERTa, XLM-R, ELECTRA)
        return [layer.attention.self for layer in model.encoder.layer]
