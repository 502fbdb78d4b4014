"""Generic jsonl/csv/tsv classification and regression, generic CoNLL-style tagging: label sets, column
aliases, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.io import DataError


def test_jsonl_classification_labels_from_train(tmp_path, tokenizer):
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}, {"text": "meh", "label": "neutral"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text(json.dumps({"text": "fine", "text_pair": "ok", "label": "pos"}) + "\n")
    task = get_task("generic_cls", data_dir=str(tmp_path))
    assert task.label_names == ["neg", "neutral", "pos"] and task.head == "cls"
    enc = load_split(task, str(tmp_path), "dev", tokenizer, 16)
    assert tokenizer.decode(enc.features[0]["input_ids"]) == "[CLS] fine [SEP] ok [SEP]"
    assert enc.features[0]["labels"] == 2
    assert task.evaluate([np.array([0, 0, 1.0])], enc) == {"accuracy": 100.0, "macro_f1": 100.0}


def test_csv_with_aliases_and_numeric_labels(tmp_path):
    (tmp_path / "train.csv").write_text('sentence1,sentence2,label\n"a, b",c,10\nd,e,2\nf,g,1\n')
    task = get_task("generic", data_dir=str(tmp_path))
    assert task.label_names == ["1", "2", "10"]          # numeric sort
    ex = task.load(str(tmp_path), "train")
    assert ex[0]["text"] == "a, b" and ex[0]["text_pair"] == "c" and ex[0]["label"] == "10"


def test_labels_txt_and_unknown_label(tmp_path):
    (tmp_path / "labels.txt").write_text("yes\nno\n")
    (tmp_path / "train.tsv").write_text("text\tlabel\nhi\tyes\nho\tmaybe\n")
    task = get_task("generic_cls", data_dir=str(tmp_path))
    assert task.label_names == ["yes", "no"]
    with pytest.raises(DataError, match=r"train.tsv:3: label 'maybe' is not in the task's label set \['yes', 'no'\]"):
        task.load(str(tmp_path), "train")


def test_regression(tmp_path, tokenizer):
    (tmp_path / "train.tsv").write_text("text\tlabel\na\t0.5\nb\t3\n")
    (tmp_path / "test.tsv").write_text("text\nc\n")
    task = get_task("generic_reg", data_dir=str(tmp_path))
    assert task.head == "reg" and task.metric == "pearson"
    enc = task.encode(task.load(str(tmp_path), "train"), tokenizer, 8)
    assert [f["labels"] for f in enc.features] == [0.5, 3.0]
    test = task.encode(task.load(str(tmp_path), "test"), tokenizer, 8)
    assert "labels" not in test.features[0] and task.predict([np.array([1.5])], test) == [1.5]
    (tmp_path / "train.tsv").write_text("text\tlabel\na\thigh\n")
    with pytest.raises(DataError, match=r"train.tsv:2: regression label 'high' is not a number"):
        task.load(str(tmp_path), "train")


def test_missing_columns(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"body": "x", "label": "a"}) + "\n")
    task = get_task("generic_cls", label_names=["a"])
    with pytest.raises(DataError, match=r"train.jsonl:1: missing column 'text'"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: missing column 'label' in a train example"):
        task.load(str(tmp_path), "train")


def test_generic_tagging(tmp_path, tokenizer):
    (tmp_path / "train.txt").write_text("Alice B-PER\nlikes O\nBob B-PER\n\nParis B-LOC\n")
    (tmp_path / "dev.txt").write_text("Carol B-PER\nsings O\n\nx B-ORG\n")
    task = get_task("generic_tag", data_dir=str(tmp_path))
    assert task.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    enc = task.encode(task.load(str(tmp_path), "train"), tokenizer, 16)
    assert len(enc) == 2
    with pytest.raises(DataError, match=r"dev.txt:4: tag 'B-ORG' is not in the task's label set"):
        task.load(str(tmp_path), "dev")
    (tmp_path / "dev.txt").write_text("Carol B-PER\nsings\n")
    with pytest.raises(DataError, match=r"dev.txt:2: expected at least 2 columns, found 1"):
        task.load(str(tmp_path), "dev")
