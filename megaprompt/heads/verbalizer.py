"""Verbalizer head: the backbone's own (pretrained) MLM head scores label words at a [MASK] position
(PET, Schick & Schuetze 2021; P-Tuning, Liu et al. 2021). P-Tuning v2 replaces this with a linear head, but
keeps it as the comparison point; it only applies to encoders with an MLM head (which families have one, and
where it lives, is the backbone adapter's knowledge: ``BackboneAdapter.has_mlm_head`` / ``mlm_head``).

Each label has one or more label words (single tokens; multi-token words use their first token, logged);
a label's score is the mean log-probability of its words at the mask position. The mask position comes as
``mask_positions`` (B,) in ``extra`` (the task's encoder puts it in each feature), or is found from
``input_ids`` (also in ``extra``) and ``mask_token_id``. ``add_mask_token`` turns a task's features into
the template ``<text> [SEP] <pair> [MASK] [SEP]`` that training and prediction both use.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def resolve_label_words(spec: str, label_names: Sequence[str]) -> list[str]:
    """``--label_words`` (comma-separated, one per label) or, when empty, the label names themselves."""
    words = [w.strip() for w in spec.split(",")] if spec else list(label_names)
    if len(words) != len(label_names):
        raise ValueError(f"label_words has {len(words)} word(s) but the task has {len(label_names)} labels "
                         f"({', '.join(label_names)}); give one word per label, in that order")
    return words


def add_mask_token(features: Sequence[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> list[dict[str, Any]]:
    """Copies of ``features`` with the mask token inserted before the final separator.

    The inserted position takes the attention mask and segment id of that separator (the last segment). A
    feature already at ``max_seq_len`` loses its last real token first, so lengths never exceed the budget.
    """
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no mask token for the verbalizer")
    out = []
    for feat in features:
        feat = dict(feat)
        full = len(feat["input_ids"]) >= max_seq_len
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in feat:
                continue
            seq = list(feat[key])
            if full:
                del seq[-2]
            seq.insert(len(seq) - 1, mask_id if key == "input_ids" else seq[-1])
            feat[key] = seq
        out.append(feat)
    return out


def label_word_ids(tokenizer: Any, label_words: Sequence[Sequence[str]]) -> list[list[int]]:
    """Token ids of each label's words, as they appear mid-sentence (leading space for BPE vocabularies)."""
    out: list[list[int]] = []
    for words in label_words:
        ids = []
        for w in words:
            toks = (tokenizer.encode(" " + w.strip(), add_special_tokens=False)
                    or tokenizer.encode(w, add_special_tokens=False))
            if not toks:
                raise ValueError(f"label word {w!r} tokenizes to nothing")
            if len(toks) > 1:
                logger.warning("label word %r is %d tokens; using its first", w, len(toks))
            ids.append(toks[0])
        out.append(ids)
    return out


class VerbalizerHead(nn.Module):
    def __init__(self, mlm_head: nn.Module, word_ids: Sequence[Sequence[int]], mask_token_id: int | None = None,
                 freeze_mlm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if not word_ids or any(not ids for ids in word_ids):
            raise ValueError("every label needs at least one label word")
        self.mlm, self.freeze_mlm = mlm_head, freeze_mlm
        if freeze_mlm:
            for p in self.mlm.parameters():
                p.requires_grad_(False)
        self.mask_token_id = mask_token_id
        self.dropout = nn.Dropout(dropout)
        width = max(len(ids) for ids in word_ids)
        ids = torch.zeros(len(word_ids), width, dtype=torch.long)
        weight = torch.zeros(len(word_ids), width)
        for i, w in enumerate(word_ids):
            ids[i, :len(w)] = torch.tensor(list(w))
            weight[i, :len(w)] = 1.0 / len(w)
        self.register_buffer("word_ids", ids, persistent=False)
        self.register_buffer("word_weight", weight, persistent=False)

    @classmethod
    def for_words(cls, mlm_head: nn.Module, tokenizer: Any, words: Sequence[str]) -> VerbalizerHead:
        """One label word per label (``resolve_label_words``); the mask position is found from input_ids."""
        return cls(mlm_head, label_word_ids(tokenizer, [[w] for w in words]), tokenizer.mask_token_id)

    def frozen_submodules(self) -> list[nn.Module]:
        """Modules ``PromptedModel.configure_trainable`` keeps frozen although the head trains: the pretrained
        MLM head is the verbalizer's point (P-tuning style); only full fine-tuning trains it."""
        return [self.mlm] if self.freeze_mlm else []

    def _mask_positions(self, extra: dict[str, Any], batch: int) -> torch.Tensor:
        pos = extra.get("mask_positions")
        if pos is not None:
            return torch.as_tensor(pos).view(-1).long()
        ids = extra.get("input_ids")
        if ids is None or self.mask_token_id is None:
            raise ValueError("VerbalizerHead needs mask_positions, or input_ids plus mask_token_id")
        is_mask = ids == self.mask_token_id
        if not bool(is_mask.any(-1).all()):
            raise ValueError("a sequence has no mask token for the verbalizer")
        return is_mask.float().argmax(-1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **extra: Any) -> dict[str, torch.Tensor | None]:
        pos = self._mask_positions(extra, hidden.shape[0]).to(hidden.device)
        at_mask = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]     # (B, H)
        vocab = F.log_softmax(self.mlm(self.dropout(at_mask)).float(), dim=-1)          # (B, V)
        picked = vocab[:, self.word_ids]                                                # (B, labels, width)
        logits = (picked * self.word_weight).sum(-1)                                    # (B, labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}
