"""Sentence / sentence-pair classification and regression, the shape shared by GLUE, most of SuperGLUE,
the generic text task and the built-in demo (Devlin et al. 2019's [CLS] text [SEP] text_pair [SEP] input).

Raw example: ``{"idx": any, "text": str, "text_pair": str | None, "label": label name | float | None}``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from megaprompt.tasks import metrics as M
from megaprompt.tasks.base import BaseTask, EncodedSplit, stack_outputs
from megaprompt.tasks.encoding import encode_texts

SCORERS = {
    "accuracy": M.accuracy,
    "f1": lambda t, p: M.f1_binary(t, p, positive=1),
    "macro_f1": M.macro_f1,
    "mcc": M.mcc,
    "pearson": M.pearson,
    "spearman": M.spearman,
}


class SentenceTask(BaseTask):
    """cls / reg over (text, text_pair). ``metrics`` lists the reported metrics, the first is primary."""

    head = "cls"
    metrics: tuple[str, ...] = ("accuracy",)

    @property
    def metric(self) -> str:  # type: ignore[override]
        return self.metrics[0]

    def prepare(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A split with any text_pair encodes every example as a pair ("" for a missing one), whichever batch
        of the tokenizing map it lands in."""
        if any(e.get("text_pair") is not None for e in examples):
            for e in examples:
                if e.get("text_pair") is None:
                    e["text_pair"] = ""
        return examples

    def encode(self, examples: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> EncodedSplit:
        texts = [e["text"] for e in examples]
        has_pair = any(e.get("text_pair") is not None for e in examples)
        pairs = [e.get("text_pair") or "" for e in examples] if has_pair else None
        feats = encode_texts(tokenizer, texts, pairs, max_seq_len, self.name)
        labelled = self.labelled(examples)
        index = {n: i for i, n in enumerate(self.label_names)}
        for i, (f, e) in enumerate(zip(feats, examples)):
            f["example_index"] = i
            if labelled:
                f["labels"] = float(e["label"]) if self.head == "reg" else index[e["label"]]
        return EncodedSplit(features=feats, examples=examples, meta={"task": self.name})

    def predict(self, outputs: Sequence[np.ndarray], split: EncodedSplit) -> list[Any]:
        logits = stack_outputs(outputs, len(split.features))
        if self.head == "reg":
            return [float(x) for x in logits.reshape(len(split.features), -1)[:, 0]]
        return [self.label_names[int(i)] for i in logits.argmax(-1)]

    def score(self, predictions: list[Any], split: EncodedSplit) -> dict[str, float]:
        if self.head == "reg":
            gold = [float(e["label"]) for e in split.examples]
            pred = [float(p) for p in predictions]
        else:
            index = {n: i for i, n in enumerate(self.label_names)}
            gold = [index[e["label"]] for e in split.examples]
            pred = [index[p] for p in predictions]
        return {m: SCORERS[m](gold, pred) for m in self.metrics}
