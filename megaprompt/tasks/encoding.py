"""Batched tokenization helpers the task encoders share.

All helpers call the (fast, Rust) tokenizer on whole lists, never per example; ``pipeline.load_split`` hands
them 1,000 examples at a time from its ``Dataset.map``. Truncation is counted and logged.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

logger = logging.getLogger(__name__)

def require_fast(tokenizer: Any, task: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"task {task!r} needs a fast (Rust) tokenizer for word/offset alignment; "
                         f"got {type(tokenizer).__name__}")


def _model_input_names(tokenizer: Any) -> list[str]:
    return list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))


def encode_texts(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_seq_len: int,
                 task: str) -> list[dict[str, list[int]]]:
    """Tokenize (text[, text_pair]) with longest-first truncation; logs how many were truncated."""
    kw: dict[str, Any] = dict(truncation=True, max_length=max_seq_len)
    enc = tokenizer(list(texts), list(pairs), **kw) if pairs is not None else tokenizer(list(texts), **kw)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    feats = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    # Exact truncation count: only sequences that hit the limit can have been cut; re-tokenize just those.
    full = [i for i, f in enumerate(feats) if len(f["input_ids"]) >= max_seq_len]
    if full:
        a = [texts[i] for i in full]
        lens = (tokenizer(a, [pairs[i] for i in full], truncation=False) if pairs is not None
                else tokenizer(a, truncation=False))["input_ids"]
        n_cut = sum(len(x) > max_seq_len for x in lens)
        if n_cut:
            logger.warning("%s: truncated %d of %d sequences to max_seq_len=%d", task, n_cut, len(texts), max_seq_len)
    return feats


def align_word_labels(word_ids: Sequence[int | None], word_labels: Sequence[int] | None) -> list[int]:
    """Label the first sub-word of each word, -100 elsewhere (continuations, special tokens)."""
    out: list[int] = []
    prev: int | None = None
    for w in word_ids:
        if w is None or w == prev:
            out.append(-100)
        else:
            out.append(word_labels[w] if word_labels is not None else -100)
        prev = w
    return out


def encode_words(tokenizer: Any, words: Sequence[Sequence[str]], labels: Sequence[Sequence[int]] | None,
                 max_seq_len: int, task: str, pairs: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Tokenize pre-split words (``is_split_into_words``); first-sub-word labels, -100 elsewhere.

    ``pairs`` (e.g. the SRL predicate) is a second segment that is never labelled and never truncated.
    Each feature keeps ``word_ids`` (-1 = no word / second segment) so predictions map back to words.
    Words cut off by truncation get no prediction (they count as "O" at evaluation); their number is logged.
    """
    require_fast(tokenizer, task)
    first = [list(w) for w in words]
    if pairs is not None:
        enc = tokenizer(first, [list(p) for p in pairs], is_split_into_words=True, truncation="only_first",
                        max_length=max_seq_len)
    else:
        enc = tokenizer(first, is_split_into_words=True, truncation=True, max_length=max_seq_len)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    feats: list[dict[str, Any]] = []
    n_cut = 0
    for i in range(len(words)):
        wids = enc.word_ids(i)
        if pairs is not None:
            seq = enc.sequence_ids(i)
            wids = [w if s == 0 else None for w, s in zip(wids, seq)]
        f: dict[str, Any] = {k: enc[k][i] for k in keys}
        if labels is not None:
            f["labels"] = align_word_labels(wids, labels[i])
        f["word_ids"] = [-1 if w is None else w for w in wids]
        f["example_index"] = i
        if len({w for w in wids if w is not None}) < len(words[i]):
            n_cut += 1
        feats.append(f)
    if n_cut:
        logger.warning("%s: truncated %d of %d sentences to max_seq_len=%d (cut words are predicted O)",
                       task, n_cut, len(words), max_seq_len)
    return feats
