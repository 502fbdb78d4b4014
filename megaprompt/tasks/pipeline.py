"""Splits as Hugging Face ``datasets`` (Arrow, memory-mapped): ``load_split`` reads, encodes and caches one split.

    enc = load_split(task, data_dir, "train", tokenizer, max_seq_len)    # the one entry point
    batch = enc.model_inputs([3, 1, 4], pad_id)                          # padded tensors of MODEL_KEYS
    for f in enc.rows(["example_index", "word_ids"]): ...                # features, decoded lazily
    enc.examples[i]                                                      # raw example i (a dict)

Building a split (the first time, on rank 0; the engine's ``rank0_first`` makes the other ranks wait and then
find the cache): the task's reader parses and validates the raw file (one-line ``file:line`` errors), the
examples go into an Arrow table of JSON rows, and tokenization is a batched ``Dataset.map`` over it that calls
the task's own ``encode`` on 1,000 examples at a time with the fast tokenizer (``example_index`` is shifted to
the split's numbering, so QA windows, multiple-choice groups, tagging alignments and SRL predicates keep their
link to the example). The map runs in one process (no ``num_proc``): the fast tokenizer already spreads each
batch over every core with its Rust threads, and worker processes would only copy batches across. Integer
columns are stored as int32. The result is saved with ``save_to_disk`` and
reopened with ``load_from_disk``: every rank, rank 0 included, then reads the same memory-mapped Arrow files
and holds no Python copy of the split. A rerun with unchanged inputs (``megaprompt.tasks.cache``) reads neither
the raw file nor runs the tokenizer. Rank 0 shows ``datasets``' tokenizing progress bar (for splits of
``BAR_FROM`` examples or more); the other ranks show none.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Sequence

from megaprompt.tasks import cache

logger = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")
LABEL_KEYS = ("labels", "start_positions", "end_positions")
PADS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "labels": -100}
MAP_BATCH = 1000
BAR_FROM = 10_000           # smaller splits tokenize in about a second: no progress bar
Transform = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class Examples(Sequence):
    """Raw examples of a split, kept as JSON rows of an Arrow table and decoded on access (never all at once)."""

    def __init__(self, table: Any) -> None:
        self.table = table          # datasets.Dataset with one string column "json"

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [json.loads(s) for s in self.table[i]["json"]]
        return json.loads(self.table[int(i)]["json"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.table.iter(batch_size=MAP_BATCH):
            yield from (json.loads(s) for s in batch["json"])


@dataclass
class EncodedSplit:
    """Features of one split plus what the metric needs to map outputs back to examples.

    ``features``: a ``datasets.Dataset`` (Arrow) or, for small hand-built splits, a list of dicts; either way
    ``features[i]`` is feature i as a dict. ``examples``: ``Examples`` or a list of dicts, in example order.
    """

    features: Any
    examples: Any = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    _inputs: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.features)

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Features in order, as dicts of ``columns`` (all if None), decoded one Arrow batch at a time."""
        if isinstance(self.features, list):
            yield from (f if columns is None else {k: f[k] for k in columns} for f in self.features)
            return
        ds = self.features.select_columns(list(columns)) if columns else self.features
        for batch in ds.iter(batch_size=MAP_BATCH):
            keys = list(batch)
            for j in range(len(batch[keys[0]]) if keys else 0):
                yield {k: batch[k][j] for k in keys}

    def column(self, name: str) -> list[Any]:
        if isinstance(self.features, list):
            return [f[name] for f in self.features]
        return list(self.features[name])

    def model_inputs(self, indices: Sequence[int], pad_id: int, lengths: bool = False) -> Any:
        """Padded tensors of the ``MODEL_KEYS`` of features ``indices`` (one Arrow ``take``); with ``lengths``
        also each feature's unpadded sequence length."""
        idx = [int(i) for i in indices]
        if isinstance(self.features, list):
            keys = [k for k in MODEL_KEYS if k in self.features[idx[0]]]
            cols = {k: [self.features[i][k] for i in idx] for k in keys}
        else:
            if self._inputs is None:
                self._inputs = self.features.select_columns(
                    [k for k in MODEL_KEYS if k in self.features.column_names])
            cols = self._inputs[idx]
        batch = pad_columns(cols, pad_id)
        return (batch, [len(s) for s in cols["input_ids"]]) if lengths else batch


def pad_columns(cols: dict[str, list[Any]], pad_id: int) -> dict[str, Any]:
    """Pad each sequence column to the batch's longest sequence: (B, L), or (B, C, L) for multiple choice."""
    import torch
    ids = cols["input_ids"]
    mc = bool(ids) and bool(ids[0]) and isinstance(ids[0][0], list)
    longest = max(len(s) for v in ids for s in v) if mc else max(len(s) for s in ids)
    out: dict[str, torch.Tensor] = {}
    for key in (k for k in MODEL_KEYS if k in cols):
        vals = cols[key]
        if key in PADS and (key != "labels" or isinstance(vals[0], list)):
            pad = pad_id if key == "input_ids" else PADS[key]
            if mc and key != "labels":
                arr = [[list(s) + [pad] * (longest - len(s)) for s in v] for v in vals]
            else:
                arr = [list(s) + [pad] * (longest - len(s)) for s in vals]
            out[key] = torch.tensor(arr, dtype=torch.long)
        else:
            out[key] = torch.tensor(vals, dtype=torch.float if isinstance(vals[0], float) else torch.long)
    return out


# ----------------------------------------------------------------------------- building and caching a split
def load_split(task: Any, data_dir: str | None, split: str, tokenizer: Any, max_seq_len: int,
               limit: int | None = None, transform: Transform | None = None,
               cache_dir: str | None = "auto") -> EncodedSplit:
    """Split ``split`` of ``task`` encoded for ``tokenizer``: from the cache when its inputs are unchanged, else
    read + encoded (+ ``transform``ed, e.g. the verbalizer's mask token) and cached. ``limit`` keeps the first N
    examples (QA windows of one question stay together). ``cache_dir=None`` (or ``MEGAPROMPT_CACHE=off``)
    builds in memory without caching."""
    _progress_bars()
    limit = limit or None
    tname = _transform_name(transform)
    root = cache.cache_root(cache_dir)
    folder = None
    if root is not None:
        files = task.source_files(data_dir, split)
        folder = root / cache.cache_key(task, split, files, tokenizer, max_seq_len, limit, tname)
        hit = cache.load(folder)
        if hit is not None:
            logger.info("%s/%s: %d features from cache %s", task.name, split, len(hit[0]), folder)
            return EncodedSplit(hit[0], Examples(hit[1]), hit[2])
    features, examples, meta = build(task, data_dir, split, tokenizer, max_seq_len, limit, transform)
    if folder is not None and cache.save(folder, features, examples, meta):
        hit = cache.load(folder)      # rank 0 too continues on the memory-mapped files; the build is freed
        if hit is not None:
            return EncodedSplit(hit[0], Examples(hit[1]), hit[2])
    return EncodedSplit(features, Examples(examples), meta)


def build(task: Any, data_dir: str | None, split: str, tokenizer: Any, max_seq_len: int, limit: int | None,
          transform: Transform | None) -> tuple[Any, Any, dict[str, Any]]:
    """(features, examples, meta) as in-memory Arrow tables: read + validate, then a batched tokenizing map."""
    import datasets
    t0 = time.time()
    raw = task.load(data_dir, split)
    if limit:
        raw = raw[:limit]
    raw = task.prepare(raw)
    labelled = task.labelled(raw)
    sample = task.encode(raw[:8], tokenizer, max_seq_len)           # meta and column types
    table = datasets.Dataset.from_dict({"json": [json.dumps(e, default=str) for e in raw]})
    n = len(raw)
    del raw
    feats = _finish(sample.features, transform, labelled, 0)
    types = _narrow(datasets.Dataset.from_list(feats).features) if feats else None
    keys = list(types) if types is not None else None

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        examples = [json.loads(s) for s in batch["json"]]
        out = _finish(task.encode(examples, tokenizer, max_seq_len).features, transform, labelled, indices[0])
        names = keys or (list(out[0]) if out else [])
        return {k: [f[k] for f in out] for k in names}

    with _merged_logs(), (cache.quiet_bars() if n < BAR_FROM else nullcontext()):
        features = table.map(encode, batched=True, batch_size=MAP_BATCH, with_indices=True, remove_columns=["json"],
                             keep_in_memory=True, features=types, desc=f"tokenizing {task.name}/{split}")
    logger.info("%s/%s: %d examples -> %d features in %.1f s", task.name, split, n, len(features), time.time() - t0)
    return features, table, dict(sample.meta)


def _transform_name(transform: Transform | None) -> str:
    """What keys a transform in the cache: its qualified name (+ a partial's scalar arguments)."""
    if transform is None:
        return ""
    func, args = transform, {}
    if isinstance(transform, partial):
        func = transform.func
        args = {k: v for k, v in transform.keywords.items() if isinstance(v, (int, float, str, bool))}
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', type(func).__name__)}"
    return name + (json.dumps(args, sort_keys=True) if args else "")


def _finish(feats: list[dict[str, Any]], transform: Transform | None, labelled: bool,
            offset: int) -> list[dict[str, Any]]:
    """A batch's features in split numbering, transformed, without labels when the split as a whole has none."""
    if transform is not None:
        feats = transform(feats)
    for f in feats:
        if "example_index" in f:
            f["example_index"] += offset
        if not labelled:
            for k in LABEL_KEYS:
                f.pop(k, None)
    return feats


def _narrow(types: Any) -> Any:
    """The same schema with every int64 as int32 (token ids, masks, labels, offsets all fit)."""
    import datasets
    from datasets.features import List, Value

    def walk(t: Any) -> Any:
        if isinstance(t, Value) and t.dtype == "int64":
            return Value("int32")
        if isinstance(t, List):
            return List(walk(t.feature), length=t.length)
        return t
    return datasets.Features({k: walk(v) for k, v in types.items()})


def _progress_bars() -> None:
    """``datasets``' bars on rank 0 only (``RANK`` as set by every launcher; absent = a single process)."""
    import datasets
    if os.environ.get("RANK", "0") != "0":
        datasets.disable_progress_bars()


@contextmanager
def _merged_logs() -> Iterator[None]:
    """Per-batch warnings of the task encoders (e.g. truncation counts) logged once, with their batch count."""
    records: list[logging.LogRecord] = []

    class Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            records.append(record)
            return False
    tasks_logger = logging.getLogger("megaprompt.tasks")
    hold = Hold()
    tasks_logger.addFilter(hold)
    for name in logging.root.manager.loggerDict:
        if name.startswith("megaprompt.tasks."):
            logging.getLogger(name).addFilter(hold)
    try:
        yield
    finally:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("megaprompt.tasks"):
                logging.getLogger(name).removeFilter(hold)
        counts = Counter(r.msg for r in records)
        seen: set[Any] = set()
        for r in records:
            if r.msg in seen:
                continue
            seen.add(r.msg)
            more = f" (in the first of {counts[r.msg]} batches that logged this)" if counts[r.msg] > 1 else ""
            logging.getLogger(r.name).log(r.levelno, r.getMessage() + more)
