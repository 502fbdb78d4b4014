"""Token classification shared by NER, SRL and the generic CoNLL-style task.

The first sub-word of every word carries its label, other positions -100 (Devlin et al. 2019, Sec. 4.3).
Predictions are mapped back to words and scored with exact-span micro F1 (``metrics.span_prf``, equivalent
to seqeval's default mode). Raw example: ``{"idx", "tokens": [str], "tags": [str] | None}`` (+ task extras).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from megaprompt.tasks import metrics as M
from megaprompt.tasks.base import BaseTask, EncodedSplit
from megaprompt.tasks.encoding import encode_words
from megaprompt.tasks.io import DataError

logger = logging.getLogger(__name__)


def check_tags(tokens: Sequence[str], tags: Sequence[str] | None, where: str) -> None:
    for name, seq in (("tokens", tokens), ("tags", tags)):
        if seq is not None and (not isinstance(seq, list) or not all(isinstance(x, str) for x in seq)):
            raise DataError(f"{where}: {name} must be a list of strings")
    if tags is not None and len(tags) != len(tokens):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
    if not tokens:
        raise DataError(f"{where}: empty sentence")


def labels_from_tags(tags: Sequence[str]) -> list[str]:
    """A deterministic BIO label list for the tags seen: O first, then B-/I- per type (sorted)."""
    types = sorted({t[2:] for t in tags if len(t) > 2 and t[1] == "-"})
    others = sorted({t for t in tags if t != "O" and not (len(t) > 2 and t[1] == "-")})
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"] + others


class TaggingTask(BaseTask):
    head = "tag"
    metric = "f1"
    ignore_types: tuple[str, ...] = ()   # span types left out of the score (e.g. the SRL predicate "V")
    strict_labels = True                 # unknown tag: error (NER) or warn and ignore in the loss (SRL)

    def label_ids(self, examples: list[dict[str, Any]]) -> list[list[int]] | None:
        if not self.labelled(examples, key="tags"):
            return None
        index = {n: i for i, n in enumerate(self.label_names)}
        out, unknown = [], 0
        for e in examples:
            ids = []
            for t in e["tags"]:
                if t not in index:
                    if self.strict_labels:
                        raise DataError(f"{self.name}: tag {t!r} (example {e.get('idx')}) is not in the task's "
                                        f"label set {self.label_names}")
                    unknown += 1
                    ids.append(-100)
                else:
                    ids.append(index[t])
            out.append(ids)
        if unknown:
            logger.warning("%s: %d tags outside the label set are ignored in the loss (still scored)", self.name,
                           unknown)
        return out

    def labelled(self, examples: list[dict[str, Any]], key: str = "tags") -> bool:  # type: ignore[override]
        return bool(examples) and all(e.get(key) is not None for e in examples)

    def segments(self, examples: list[dict[str, Any]]) -> list[list[str]] | None:
        """Optional second (unlabelled) segment per example; SRL puts the predicate there."""
        return None

    def encode(self, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> EncodedSplit:
        feats = encode_words(tokenizer, [e["tokens"] for e in examples], self.label_ids(examples), max_seq_len,
                             self.name, pairs=self.segments(examples))
        return EncodedSplit(features=feats, examples=examples, meta={"task": self.name})

    def predict(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[list[str]]:
        if len(outputs) != len(split.features):
            raise ValueError(f"got outputs for {len(outputs)} features, expected {len(split.features)}")
        preds = [["O"] * len(e["tokens"]) for e in split.examples]
        for f, logits in zip(split.rows(["example_index", "word_ids"]), outputs):
            ids = np.asarray(logits).argmax(-1)
            row = preds[f["example_index"]]
            prev = -1
            for j, w in enumerate(f["word_ids"]):
                if w >= 0 and w != prev and j < len(ids):
                    row[w] = self.label_names[int(ids[j])]
                prev = w
        return preds

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        return M.span_prf([e["tags"] for e in split.examples], predictions, ignore_types=self.ignore_types)

    def evaluate(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> dict[str, float]:
        if not self.labelled(split.examples):
            raise ValueError(f"task {self.name!r}: cannot evaluate a split without gold tags")
        return {k: 100.0 * v for k, v in self.score(self.predict(outputs, split), split).items()}
