"""The built-in demo task: sizes, balance, determinism, disjoint splits, negation/contrast coverage."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.demo import generate


def test_counts_and_balance():
    task = get_task("demo")
    assert task.head == "cls" and task.metric == "accuracy" and task.label_names == ["negative", "positive"]
    for split, n in (("train", 1600), ("dev", 240), ("validation", 240), ("test", 240)):
        rows = task.load(None, split)
        assert len(rows) == n
        counts = collections.Counter(r["label"] for r in rows)
        assert counts["positive"] == counts["negative"] == n // 2


def test_deterministic_and_disjoint():
    a, b = generate(), generate()
    assert a == b
    assert generate(seed=1)["train"] != a["train"]
    train = {r["text"] for r in a["train"]}
    dev = {r["text"] for r in a["dev"]}
    test = {r["text"] for r in a["test"]}
    assert len(train) == 1600 and len(dev) == 240 and len(test) == 240
    assert not (train & dev) and not (train & test) and not (dev & test)


def test_not_lexical_only():
    rows = generate()["train"]
    texts = [r["text"] for r in rows]
    assert sum(" not " in t or "anything but" in t for t in texts) > 200
    assert sum(", but " in t for t in texts) > 200
    # the same sentiment word appears under both labels, so word lookup alone cannot solve the task
    by_word = collections.defaultdict(set)
    for r in rows:
        for w in r["text"].lower().strip(".").replace(",", "").split():
            by_word[w].add(r["label"])
    assert by_word["great"] == {"negative", "positive"} and by_word["boring"] == {"negative", "positive"}


def test_encode_and_evaluate(tokenizer):
    task = get_task("demo")
    enc = load_split(task, None, "dev", tokenizer, 64)
    assert len(enc) == 240 and {f["labels"] for f in enc.features} == {0, 1}
    gold = np.array([f["labels"] for f in enc.features])
    perfect = np.eye(2)[gold]
    assert task.evaluate(list(perfect), enc) == pytest.approx({"accuracy": 100.0, "macro_f1": 100.0})
    worst = np.eye(2)[1 - gold]
    assert task.evaluate(list(worst), enc)["accuracy"] == 0.0
    assert task.predict(list(perfect), enc)[:3] == [r["label"] for r in enc.examples[:3]]


def test_unknown_split():
    with pytest.raises(ValueError, match="no split 'dev2'"):
        get_task("demo").load(None, "dev2")
