"""SuperGLUE loaders/encoders on tiny fixtures, the official split sizes on the real files, and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.io import DataError

from .conftest import shared


def write_jsonl(d, name, rows):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def one_hot(idx, n):
    return list(np.eye(n)[np.asarray(idx)])


@pytest.mark.parametrize("name,folder,counts", [
    ("rte", "RTE", (2490, 277, 3000)), ("cb", "CB", (250, 56, 250)), ("copa", "COPA", (400, 100, 500)),
    ("wsc", "WSC", (554, 104, 146))])
def test_real_counts(name, folder, counts):
    d = shared("superglue", folder)
    task = get_task(name)
    got = tuple(len(task.load(str(d), s)) for s in ("train", "dev", "test"))
    assert got == counts
    assert all(e["label"] is None for e in task.load(str(d), "test"))


def test_real_cb_labels_and_encode(tokenizer):
    d = shared("superglue", "CB")
    task = get_task("cb")
    enc = load_split(task, str(d), "dev", tokenizer, 128)
    gold = [f["labels"] for f in enc.features]
    assert sorted(set(gold)) == [0, 1, 2]
    m = task.evaluate(one_hot(gold, 3), enc)
    assert m == {"accuracy": pytest.approx(100.0), "macro_f1": pytest.approx(100.0)}


def test_boolq_pair_order_and_bool_labels(tmp_path, tokenizer):
    write_jsonl(tmp_path, "train.jsonl", [
        {"question": "is it wet", "passage": "Water is wet.", "idx": 0, "label": True},
        {"question": "is fire cold", "passage": "Fire is hot.", "idx": 1, "label": False}])
    task = get_task("boolq")
    ex = task.load(str(tmp_path), "train")
    assert [e["label"] for e in ex] == ["True", "False"]
    enc = task.encode(ex, tokenizer, 64)
    assert tokenizer.decode(enc.features[0]["input_ids"]) == "[CLS] is it wet [SEP] water is wet. [SEP]"
    assert [f["labels"] for f in enc.features] == [1, 0]


def test_copa_multiple_choice(tmp_path, tokenizer):
    write_jsonl(tmp_path, "val.jsonl", [
        {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.", "question": "cause",
         "idx": 0, "label": 0},
        {"premise": "It rained.", "choice1": "The grass got wet.", "choice2": "The sun shone.",
         "question": "effect", "idx": 1, "label": 1}])
    task = get_task("copa")
    enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 64)
    f = enc.features[0]
    assert len(f["input_ids"]) == 2 and len(f["attention_mask"]) == 2
    assert tokenizer.decode(f["input_ids"][1]) == "[CLS] the man fell. because [SEP] he sang. [SEP]"
    assert "so" in tokenizer.decode(enc.features[1]["input_ids"][0]).split()
    assert [f["labels"] for f in enc.features] == [0, 1]
    assert task.evaluate([np.array([2.0, 1.0]), np.array([0.0, 1.0])], enc) == {"accuracy": 100.0}
    assert task.evaluate([np.array([0.0, 1.0]), np.array([0.0, 1.0])], enc) == {"accuracy": 50.0}


def test_wic_marks_target_spans(tmp_path, tokenizer):
    write_jsonl(tmp_path, "train.jsonl", [
        {"word": "bank", "sentence1": "He sat by the bank.", "sentence2": "The bank raised rates.",
         "start1": 14, "end1": 18, "start2": 4, "end2": 8, "idx": 0, "label": False}])
    task = get_task("wic")
    e = task.load(str(tmp_path), "train")[0]
    assert e["text"] == "bank: He sat by the *bank*." and e["text_pair"] == "bank: The *bank* raised rates."
    bad = tmp_path / "bad"
    write_jsonl(bad, "train.jsonl", [{"word": "x", "sentence1": "ab", "sentence2": "cd", "start1": 0, "end1": 9,
                                      "start2": 0, "end2": 1, "label": True}])
    with pytest.raises(DataError, match=r"train.jsonl:1: target span \[0, 9\) outside"):
        task.load(str(bad), "train")


def test_wsc_marks_both_spans(tmp_path):
    write_jsonl(tmp_path, "train.jsonl", [
        {"text": "Mark told Pete many lies . He should know .", "target": {
            "span1_index": 0, "span1_text": "Mark", "span2_index": 6, "span2_text": "He"}, "idx": 0, "label": True}])
    e = get_task("wsc").load(str(tmp_path), "train")[0]
    assert e["text"] == "[Mark] told Pete many lies . *He* should know ." and e["text_pair"] == "Mark"
    assert e["label"] == "True"


def test_multirc_flatten_and_score(tmp_path, tokenizer):
    write_jsonl(tmp_path, "val.jsonl", [{"idx": 0, "passage": {"text": "Sky is blue. Grass is green.", "questions": [
        {"idx": 0, "question": "Color of sky?", "answers": [{"idx": 0, "text": "blue", "label": 1},
                                                            {"idx": 1, "text": "red", "label": 0}]},
        {"idx": 1, "question": "Color of grass?", "answers": [{"idx": 2, "text": "green", "label": 1}]}]}}])
    task = get_task("multirc")
    enc = load_split(task, str(tmp_path), "dev", tokenizer, 64)
    assert len(enc) == 3 and enc.examples[1]["text_pair"] == "Color of sky? red"
    m = task.evaluate(one_hot([1, 1, 1], 2), enc)   # option 2 wrong: F1a = 2*(2/3*1)/(5/3) = 0.8, EM 1/2
    assert m["f1a"] == pytest.approx(80.0) and m["em"] == pytest.approx(50.0)


def test_record_candidates(tmp_path, tokenizer):
    text = "@highlight\nObama visited Paris with Biden."
    write_jsonl(tmp_path, "val.jsonl", [{"idx": 0, "passage": {
        "text": text, "entities": [{"start": 11, "end": 15}, {"start": 25, "end": 29}, {"start": 36, "end": 40}]},
        "qas": [{"idx": 7, "query": "@placeholder is the capital of France.",
                 "answers": [{"start": 25, "end": 29, "text": "Paris"}]}]}])
    task = get_task("record")
    enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 64)
    assert [f["entity"] for f in enc.features] == ["Obama", "Paris", "Biden"]
    assert [f["labels"] for f in enc.features] == [0, 1, 0]
    assert "paris is the capital" in tokenizer.decode(enc.features[1]["input_ids"])
    assert task.evaluate([np.array([0, 1.0]), np.array([0, 3.0]), np.array([0, 2.0])], enc) == {
        "f1": 100.0, "em": 100.0}
    assert task.predict([np.array([0, 5.0]), np.array([0, 3.0]), np.array([0, 2.0])], enc) == ["Obama"]


def test_errors(tmp_path):
    task = get_task("rte")
    (tmp_path / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "entailment"}\n{oops\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: malformed JSON line"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1: label 'maybe' is not in the task's label set"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.jsonl").write_text('{"premise": "a", "label": "entailment"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1: missing field\(s\) \['hypothesis'\]"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b"}\n')
    with pytest.raises(DataError, match=r"missing field 'label' in a train example"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"train.jsonl: file is empty"):
        task.load(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"split 'dev': none of .*val.jsonl"):
        task.load(str(tmp_path), "dev")


def test_truncation_is_logged(tmp_path, tokenizer, caplog):
    write_jsonl(tmp_path, "train.jsonl", [
        {"premise": "word " * 200, "hypothesis": "short", "label": "entailment"},
        {"premise": "tiny", "hypothesis": "short", "label": "entailment"}])
    task = get_task("rte")
    with caplog.at_level("WARNING"):
        enc = task.encode(task.load(str(tmp_path), "train"), tokenizer, 32)
    assert len(enc.features[0]["input_ids"]) == 32
    assert "rte: truncated 1 of 2 sequences to max_seq_len=32" in caplog.text
