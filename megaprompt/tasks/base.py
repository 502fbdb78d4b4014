"""The task protocol: one object per task family bundles loader, preprocessing, head kind and metric.

A task turns files in one task's folder (as officially distributed) into encoded features the engine can
batch (``megaprompt.tasks.pipeline.load_split`` runs ``encode`` in batches of examples and stores the features as
Arrow), and turns the model's gathered outputs back into the paper's metric (in percent, lower-case names).

Batch conventions (what ``encode`` must produce per feature, all plain Python lists of ints/floats; every
feature carries ``example_index``, its example's position in the list ``encode`` was given):
  - every head: ``input_ids``, ``attention_mask`` and, for encoders that use them, ``token_type_ids``.
  - ``cls``  (pooled classification): ``labels`` int.
  - ``reg``  (pooled regression): ``labels`` float.
  - ``mc``   (multiple choice): ``input_ids`` etc. are lists of C sequences; ``labels`` int in [0, C).
  - ``tag``  (token classification): ``labels`` list aligned with ``input_ids``; -100 on every position
    that is not the first sub-word of a word (and on special tokens).
  - ``span`` (extractive QA): ``start_positions`` / ``end_positions`` ints (0 = CLS for no answer).
  Features may carry extra keys (e.g. ``example_id``, ``offset_mapping``) that the collator ignores:
  only keys in ``MODEL_KEYS`` are turned into tensors.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from megaprompt.tasks.pipeline import MODEL_KEYS, EncodedSplit  # noqa: F401  (re-exported)

HEAD_KINDS = ("cls", "reg", "mc", "tag", "span")


class Task(Protocol):
    """What the engine needs from a task. Implementations live one module per task family."""

    name: str
    head: str                 # one of HEAD_KINDS
    label_names: list[str]    # [] for regression / span
    metric: str               # the primary (model-selection) metric, e.g. "accuracy"
    splits: dict[str, str]    # canonical split ("train"/"dev"/"test") -> file name or pattern

    def load(self, data_dir: str | None, split: str) -> list[dict[str, Any]]:
        """Raw examples of one split; a clear one-line error on malformed input."""

    def encode(self, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> EncodedSplit:
        """Tokenize examples into features following the batch conventions above."""

    def evaluate(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> dict[str, float]:
        """Metrics in percent from per-feature model outputs (logits), in feature order."""


# ----------------------------------------------------------------------------- shared implementation
import difflib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

from megaprompt.tasks.io import DataError, find_file  # noqa: E402

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"validation": "dev", "val": "dev", "valid": "dev", "eval": "dev"}


def canonical_split(split: str, splits: dict[str, str], task: str) -> str:
    """Map aliases (validation/val/valid) to the canonical name; a clear error for unknown splits."""
    s = SPLIT_ALIASES.get(split, split)
    if s not in splits:
        raise ValueError(f"task {task!r} has no split {split!r}; valid: {sorted(splits)}")
    return s


def check_label(value: Any, label_names: Sequence[str], where: str) -> str:
    """Normalise a raw label (str / bool / int) to one of ``label_names`` or raise naming the file/line."""
    if isinstance(value, bool):
        candidates = [str(value), str(value).lower(), str(int(value))]
    else:
        candidates = [str(value).strip()]
    for c in candidates:
        if c in label_names:
            return c
    raise DataError(f"{where}: label {value!r} is not in the task's label set {list(label_names)}")


def require(row: dict[str, Any], keys: Sequence[str], where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with {list(keys)}, got {type(row).__name__}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    null = [k for k in keys if row[k] is None or (isinstance(row[k], float) and not math.isfinite(row[k]))]
    if null:
        raise DataError(f"{where}: field(s) {null} are null or NaN")


@contextmanager
def at(where: str) -> Iterator[None]:
    """Parse one record: a field of the wrong type or shape (a TypeError, KeyError, ... in the parsing code) becomes
    a one-line ``DataError`` naming ``where``, the file:line or record at fault."""
    try:
        yield
    except DataError:
        raise
    except KeyError as e:
        raise DataError(f"{where}: missing field {e.args[0]!r}") from None
    except (TypeError, AttributeError, IndexError, ValueError, OverflowError) as e:
        raise DataError(f"{where}: malformed record ({type(e).__name__}: {one_line_of(e)})") from None


def one_line_of(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def finite_number(raw: Any, where: str) -> float:
    """A regression label: a finite float, else a one-line error naming ``where``."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: regression label {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: regression label {raw!r} is not a finite number")
    return value


class BaseTask:
    """Common plumbing: split-file lookup, Hugging Face fallback, argmax prediction, submission hooks.

    Subclasses set the class attributes and implement ``read(path, split)`` (one split file -> raw examples),
    ``encode`` and ``score`` (gold vs predictions -> fractions). ``predict`` maps logits to per-example
    predictions (label names, floats, answer strings) and ``evaluate`` = ``score`` * 100.
    """

    name: str = ""
    head: str = "cls"
    label_names: list[str] = []
    metric: str = "accuracy"
    splits: dict[str, str] = {}
    hf_dataset: tuple[str, str | None] | None = None   # (path, config) for datasets.load_dataset
    hf_splits: dict[str, str] = {"train": "train", "dev": "validation", "test": "test"}
    source: str = ""          # citation for docs
    file_format: str = ""     # human-readable description for docs

    # ---- loading
    def load(self, data_dir: str | None, split: str) -> list[dict[str, Any]]:
        split = canonical_split(split, self.splits, self.name)
        if data_dir is None:
            return self.load_hf(split)
        path = find_file(data_dir, self.splits[split], f"task {self.name!r} split {split!r}")
        with at(str(path)):    # a safety net; readers name the line themselves
            examples = self.read(path, split)
        if not examples:
            raise DataError(f"{path}: no examples")
        logger.info("%s/%s: %d examples from %s", self.name, split, len(examples), path)
        return examples

    def require_files(self, data_dir: str, split: str) -> None:
        """Raise a one-line ``DataError`` when ``split``'s file is missing (a cheap check: nothing is read)."""
        self.split_path(data_dir, split)

    def source_files(self, data_dir: str | None, split: str) -> list[Path]:
        """Every file ``load(data_dir, split)`` reads (the feature cache hashes their bytes); [] for the hub."""
        return [] if data_dir is None else [self.split_path(data_dir, split)]

    def prepare(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Split-level normalisation before ``encode`` runs on batches of examples (default: none)."""
        return examples

    def split_path(self, data_dir: str, split: str) -> Path:
        split = canonical_split(split, self.splits, self.name)
        return find_file(data_dir, self.splits[split], f"task {self.name!r} split {split!r}")

    def read(self, path: Path, split: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def load_hf(self, split: str) -> list[dict[str, Any]]:
        if self.hf_dataset is None:
            raise ValueError(f"task {self.name!r} needs --data_dir (no Hugging Face dataset known)")
        if split not in self.hf_splits:
            raise ValueError(f"task {self.name!r}: split {split!r} is not available from the Hugging Face hub")
        path, config = self.hf_dataset
        try:
            import datasets
            ds = datasets.load_dataset(path, config, split=self.hf_splits[split])
        except Exception as e:  # offline, missing dataset, ...
            raise RuntimeError(
                f"task {self.name!r}: could not load Hugging Face dataset {path}"
                f"{'/' + config if config else ''} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"pass --data_dir with the task's files instead") from None
        return self.from_hf([dict(r) for r in ds], split)

    def from_hf(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """Turn Hugging Face rows into raw examples (default: the same as the jsonl/tsv fields)."""
        return self.parse_rows(rows, f"{self.hf_dataset[0] if self.hf_dataset else self.name}:{split}", split)

    def parse_rows(self, rows: list[dict[str, Any]], where: str, split: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    # ---- outputs
    def labelled(self, examples: list[dict[str, Any]]) -> bool:
        return bool(examples) and all(e.get("label") is not None for e in examples)

    def predict(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[Any]:
        """Per-example predictions (label names by default: argmax of per-feature logits)."""
        logits = stack_outputs(outputs, len(split.features))
        return [self.label_names[int(i)] for i in logits.argmax(-1)]

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> dict[str, float]:
        if not self.labelled(split.examples):
            raise ValueError(f"task {self.name!r}: cannot evaluate a split without gold labels")
        preds = self.predict(outputs, split)
        return {k: 100.0 * v for k, v in self.score(preds, split).items()}

    def __repr__(self) -> str:
        return f"<task {self.name} head={self.head} metric={self.metric} labels={len(self.label_names)}>"


def stack_outputs(outputs: Sequence[np.ndarray] | np.ndarray, n: int) -> np.ndarray:
    """Per-feature outputs as one (n, ...) array, checking the count."""
    arr = np.asarray(outputs) if not isinstance(outputs, np.ndarray) else outputs
    if arr.shape[0] != n:
        raise ValueError(f"got outputs for {arr.shape[0]} features, expected {n}")
    return arr


def closest(name: str, valid: Sequence[str]) -> str:
    hits = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {hits[0]!r}?)" if hits else ""
