"""Prompt tuning (Lester et al., EMNLP 2021): P trainable vectors prepended to the input embeddings only.

Unlike deep prefixes, these prompts occupy input positions: real tokens start at position P, so
``max_seq_len + prompt_len`` must fit the backbone's position table. Rows of one batch must therefore use
prompts of one length (``bank.gather_input_prompt`` refuses a mix).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from megaprompt.backbones.base import BackboneSpec
from megaprompt.prompts.config import PromptConfig


class InputPrompt(nn.Module):
    kind = "input"

    def __init__(self, cfg: PromptConfig, spec: BackboneSpec) -> None:
        super().__init__()
        self.cfg = cfg                 # what an export records of this prompt
        self.prompt_len = cfg.prompt_len
        # The width of the word embeddings it is concatenated with (ELECTRA-small: 128, not hidden 256).
        self.embedding = nn.Parameter(torch.empty(cfg.prompt_len, spec.embedding_size or spec.hidden_size))
        with torch.no_grad():
            if cfg.init == "zero":
                self.embedding.zero_()
            else:
                # Input-embedding scale, not the official prefix's N(0, 1): word embeddings are ~N(0, 0.02-0.05).
                self.embedding.normal_(0.0, min(cfg.init_std, 0.02))
        self.dropout = nn.Dropout(cfg.prefix_dropout)

    def forward(self) -> torch.Tensor:
        """(P, embedding width) for one example; the bank expands it per row and applies ``dropout``."""
        return self.embedding

    def table_tensor(self) -> torch.Tensor:
        return self.embedding.detach()
