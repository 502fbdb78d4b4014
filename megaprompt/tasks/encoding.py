"""Batched tokenization helpers and the on-disk feature cache.

All helpers call the (fast, Rust) tokenizer on whole lists, never per example. Truncation is counted
and logged. The cache stores an ``EncodedSplit``'s features as column arrays in ``.npz`` (no pickle)
under ``$MEGAPROMPT_CACHE`` or
``~/.cache/megaprompt``, keyed by task, split, a hash of the raw examples (i.e. of the file contents),
the tokenizer (its full serialised vocabulary/config) and ``max_seq_len``; ``MEGAPROMPT_CACHE=off`` disables it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from megaprompt.files import follow_umask
from megaprompt.tasks.base import EncodedSplit

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"


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


# ----------------------------------------------------------------------------- cache
def cache_dir() -> Path | None:
    env = os.environ.get("MEGAPROMPT_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(env) if env else Path.home() / ".cache" / "megaprompt"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:   # truncation / padding state changes with every call: leave it out
        state = json.loads(backend.to_str())
        state.pop("truncation", None), state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(_model_input_names(tokenizer)).encode())
    return h.hexdigest()[:16]


def cache_key(task: Any, split: str, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> str:
    h = hashlib.sha256()
    options = getattr(task, "cache_options", lambda: {})()
    h.update(json.dumps([CACHE_VERSION, task.name, split, max_seq_len, options], sort_keys=True, default=str).encode())
    h.update(json.dumps(examples, sort_keys=True, default=str).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return f"{task.name}-{split}-{max_seq_len}-{h.hexdigest()[:20]}"


def _pack(features: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Column-wise arrays: scalars as 1-D arrays, ragged (L,) / (L, k) lists as flat data + lengths,
    anything else (e.g. multiple-choice (C, L) lists) as UTF-8 JSON bytes. No pickle anywhere."""
    arrays: dict[str, np.ndarray] = {}
    keys = list(features[0]) if features else []
    for key in keys:
        vals = [f.get(key) for f in features]
        first = vals[0]
        try:
            if all(isinstance(v, (bool, int, float)) and not isinstance(v, bool) for v in vals):
                arrays[f"s:{key}"] = np.asarray(vals)
                continue
            if all(isinstance(v, (list, tuple)) for v in vals) and (not first or not isinstance(first[0], list)
                                                                    or len(first[0]) <= 2):
                flat = [x for v in vals for x in v]
                data = np.asarray(flat)
                if data.dtype != object and (data.ndim == 1 or data.ndim == 2):
                    arrays[f"r:{key}"] = data
                    arrays[f"n:{key}"] = np.asarray([len(v) for v in vals], dtype=np.int64)
                    continue
        except (ValueError, TypeError):
            pass
        arrays[f"j:{key}"] = np.frombuffer(json.dumps(vals).encode("utf-8"), dtype=np.uint8)
    return arrays


def _unpack(arrays: Any, n: int) -> list[dict[str, Any]]:
    features: list[dict[str, Any]] = [{} for _ in range(n)]
    for name in arrays.files:
        if ":" not in name:
            continue
        kind, key = name.split(":", 1)
        if kind == "s":
            for f, v in zip(features, arrays[name].tolist()):
                f[key] = v
        elif kind == "r":
            data = arrays[name].tolist()
            lengths = arrays[f"n:{key}"].tolist()
            pos = 0
            for f, ln in zip(features, lengths):
                f[key] = data[pos:pos + ln]
                pos += ln
        elif kind == "j":
            for f, v in zip(features, json.loads(arrays[name].tobytes().decode("utf-8"))):
                f[key] = v
    return features


def cached_encode(task: Any, split: str, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int,
                  directory: str | Path | None = "auto") -> EncodedSplit:
    """``task.encode`` with an on-disk cache (``.npz``, no pickle); ``directory=None`` or
    ``MEGAPROMPT_CACHE=off`` disables it. Features keep their key order and Python types (lists / ints)."""
    d = cache_dir() if directory == "auto" else (Path(directory) if directory is not None else None)
    if d is None:
        return task.encode(examples, tokenizer, max_seq_len)
    key = cache_key(task, split, examples, tokenizer, max_seq_len)
    path = d / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["__header__"].tobytes().decode("utf-8"))
                feats = _unpack(z, header["n"])
            feats = [{k: f[k] for k in header["keys"] if k in f} for f in feats]
            logger.info("%s/%s: %d features from cache %s", task.name, split, len(feats), path)
            return EncodedSplit(features=feats, examples=examples, meta=header["meta"])
        except (OSError, ValueError, KeyError) as e:
            logger.warning("ignoring unreadable cache file %s (%s)", path, e)
    enc = task.encode(examples, tokenizer, max_seq_len)
    try:
        d.mkdir(parents=True, exist_ok=True)
        arrays = _pack(enc.features)
        header = {"n": len(enc.features), "keys": list(enc.features[0]) if enc.features else [], "meta": enc.meta}
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        follow_umask(tmp)      # mkstemp makes 0600; colleagues on a shared cluster read the cache too
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError) as e:
        logger.warning("could not write feature cache %s (%s)", path, e)
    return enc
