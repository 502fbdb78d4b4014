"""The data readers on arbitrary input: bytes, JSON of any shape, TSV and CoNLL text never raise anything but a
one-line ``UserError`` (the CLI prints it and exits 2); readable input also encodes without an error. Plus the
named cases: UTF-8 byte-order mark, null / NaN fields, bytes that are not UTF-8, malformed SQuAD."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megaprompt.errors import UserError
from megaprompt.tasks import get_task

KEYS = ["text", "text_pair", "label", "idx", "premise", "hypothesis", "question", "passage", "choice1", "choice2",
        "word", "sentence1", "sentence2", "start1", "end1", "start2", "end2", "target", "span1_index", "span1_text",
        "span2_index", "span2_text", "questions", "answers", "qas", "query", "entities", "start", "end", "data",
        "paragraphs", "context", "id", "answer_start", "is_impossible", "tokens", "tags", "predicate_index"]
SCALARS = (st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["entailment", "cause", "effect", "0", "1", "B-PER", "O", "True"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=6), max_leaves=25)
ROW = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8)
CELL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10) | st.sampled_from(["0", "1", "2.5", "nan"])

# (task, split file) - every reader family: SuperGLUE / generic jsonl, GLUE / generic TSV and CSV, CoNLL columns,
# CoNLL-2004 and SQuAD JSON documents, deep_srl lines
JSONL = [("rte", "train.jsonl"), ("boolq", "train.jsonl"), ("cb", "train.jsonl"), ("copa", "train.jsonl"),
         ("multirc", "train.jsonl"), ("record", "train.jsonl"), ("wic", "train.jsonl"), ("wsc", "train.jsonl"),
         ("generic_cls", "train.jsonl"), ("generic_reg", "train.jsonl"), ("conll05", "train.jsonl")]
TABLES = [("sst2", "train.tsv", ["sentence", "label"]), ("mrpc", "train.tsv", ["#1 String", "#2 String", "Quality"]),
          ("stsb", "train.tsv", ["sentence1", "sentence2", "score"]), ("cola", "train.tsv", None),
          ("generic_cls", "train.csv", ["text", "label"]), ("rte", "train.tsv", ["sentence1", "sentence2", "label"])]
TEXTS = [("conll03", "eng.train"), ("generic_tag", "train.txt"), ("conll05", "conll05.train.txt")]
DOCS = [("squad", "train-v1.1.json"), ("conll04", "train.json")]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def load(name: str, filename: str, data: bytes, tokenizer=None) -> None:
    """Read (and, if readable, encode a few examples of) a split file holding ``data``: only UserError may escape."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / filename).write_bytes(data)
        try:
            task = get_task(name, data_dir=d)
            examples = task.load(d, "train")
        except UserError:
            return
        assert isinstance(examples, list) and examples
        if tokenizer is not None and (task.label_names or task.head in ("reg", "span")):
            enc = task.encode(examples[:4], tokenizer, 32)
            assert len(enc.features) >= 0


@pytest.mark.parametrize("name,filename", JSONL + [(t, f) for t, f, _ in TABLES] + TEXTS + DOCS)
@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(name, filename, data):
    load(name, filename, data)


# a valid record per reader; the fuzz mutates it (any node replaced by any JSON value, keys dropped, items added),
# so it reaches the checks deep inside a record, not only the first "missing field"
VALID = {
    "rte": {"premise": "a", "hypothesis": "b", "label": "entailment", "idx": 0},
    "boolq": {"question": "q", "passage": "p", "label": True},
    "cb": {"premise": "a", "hypothesis": "b", "label": "neutral"},
    "copa": {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0},
    "multirc": {"idx": 0, "passage": {"text": "t", "questions": [
        {"question": "q", "idx": 0, "answers": [{"text": "a", "idx": 0, "label": 1}]}]}},
    "record": {"idx": 0, "passage": {"text": "Obama went to Paris", "entities": [{"start": 0, "end": 4}]},
               "qas": [{"query": "@placeholder went", "idx": "q", "answers": [{"text": "Obama"}]}]},
    "wic": {"word": "w", "sentence1": "a w", "sentence2": "w b", "start1": 2, "end1": 3, "start2": 0, "end2": 1,
            "label": True},
    "wsc": {"text": "Mark told Pete he", "label": True,
            "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 3, "span2_text": "he"}},
    "generic_cls": {"text": "a", "text_pair": "b", "label": "x"},
    "generic_reg": {"text": "a", "label": 1.5},
    "conll05": {"tokens": ["a", "b"], "predicate_index": 1, "tags": ["B-A0", "B-V"]},
    "squad": {"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [
        {"id": "q", "question": "?", "answers": [{"text": "b", "answer_start": 1}]}]}]}]},
    "conll04": [{"tokens": ["Paris", "is"], "tags": ["U-Loc", "O"]}],
}


@st.composite
def mutated(draw, value):
    if draw(st.integers(0, 5)) == 0:
        return draw(JSON)
    if isinstance(value, dict):
        return {k: draw(mutated(v)) for k, v in value.items() if draw(st.integers(0, 9))}
    if isinstance(value, list):
        return [draw(mutated(v)) for v in value] + draw(st.lists(JSON, max_size=1))
    return value


@pytest.mark.parametrize("name,filename", JSONL)
@FUZZ
@given(data=st.data())
def test_jsonl_records_of_any_shape(name, filename, data, tokenizer):
    rows = data.draw(st.lists(mutated(VALID[name]) | ROW | JSON, min_size=1, max_size=4))
    load(name, filename, "".join(json.dumps(r) + "\n" for r in rows).encode(), tokenizer)


@pytest.mark.parametrize("name,filename,header", TABLES)
@FUZZ
@given(rows=st.lists(st.lists(CELL, min_size=1, max_size=4), min_size=1, max_size=5))
def test_tables_of_any_cells(name, filename, header, rows, tokenizer):
    sep = "," if filename.endswith(".csv") else "\t"
    lines = ([sep.join(header)] if header else []) + [sep.join(r) for r in rows]
    load(name, filename, ("\n".join(lines) + "\n").encode(), tokenizer)


@pytest.mark.parametrize("name,filename", TEXTS)
@FUZZ
@given(lines=st.lists(st.lists(CELL | st.sampled_from(["B-PER", "I-LOC", "O", "(A0*", "*)", "|||", "2"]),
                               max_size=5), min_size=1, max_size=8))
def test_column_text(name, filename, lines, tokenizer):
    load(name, filename, ("\n".join(" ".join(x) for x in lines) + "\n").encode(), tokenizer)


@pytest.mark.parametrize("name,filename", DOCS)
@FUZZ
@given(data=st.data())
def test_json_documents_of_any_shape(name, filename, data, tokenizer):
    doc = data.draw(mutated(VALID[name]) | JSON)
    load(name, filename, json.dumps(doc).encode(), tokenizer)


# ---- named cases: the exact one-line messages ----------------------------------------------------------------
def _err(tmp_path, name, filename, data: bytes) -> str:
    (tmp_path / filename).write_bytes(data)
    with pytest.raises(UserError) as info:
        get_task(name, data_dir=str(tmp_path)).load(str(tmp_path), "train")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    row = {"premise": "p", "hypothesis": "h", "label": "entailment"}
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert get_task("rte").load(str(tmp_path), "train")[0]["text"] == "p"
    (tmp_path / "train.tsv").write_bytes(b"\xef\xbb\xbfsentence\tlabel\nfine\t1\n")
    assert get_task("sst2").load(str(tmp_path), "train")[0]["text"] == "fine"
    (tmp_path / "eng.train").write_bytes(b"\xef\xbb\xbfParis NNP B-NP I-LOC\n")
    assert get_task("conll03").load(str(tmp_path), "train")[0]["tokens"] == ["Paris"]


def test_invalid_utf8_names_the_line(tmp_path):
    ok = json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment"}).encode()
    msg = _err(tmp_path, "rte", "train.jsonl", ok + b"\n" + ok + b"\n" + b'{"premise": "caf\xe9"}\n')
    assert msg.endswith("train.jsonl:3: not UTF-8 text (byte b'\\xe9' at column 17)")
    assert _err(tmp_path, "sst2", "train.tsv", b"sentence\tlabel\ngood\t1\nbad\xff\t0\n").endswith(
        "train.tsv:3: not UTF-8 text (byte b'\\xff' at column 4)")
    assert _err(tmp_path, "conll03", "eng.train", b"a b c O\n\n\xc3 b c O\n").endswith("eng.train:3: not UTF-8 text "
                                                                                        "(byte b'\\xc3' at column 1)")
    assert _err(tmp_path, "squad", "train-v1.1.json", b'{"data":\n [\n"\xff"]}').endswith(
        "train-v1.1.json:3: not UTF-8 text")


def test_null_and_nan_fields(tmp_path):
    row = {"premise": None, "hypothesis": "h", "label": "entailment"}
    assert "train.jsonl:1: field(s) ['premise'] are null or NaN" in _err(
        tmp_path, "rte", "train.jsonl", json.dumps(row).encode())
    assert "train.jsonl:1: regression label nan is not a finite number" in _err(
        tmp_path, "generic_reg", "train.jsonl", json.dumps({"text": "t", "label": math.nan}).encode())
    assert "train.tsv:2: regression label 'inf' is not a finite number" in _err(
        tmp_path, "stsb", "train.tsv", b"sentence1\tsentence2\tscore\na\tb\tinf\n")
    assert "train.jsonl:2: label None is empty, null or NaN" in _err(
        tmp_path, "generic_cls", "train.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": null}\n')
    assert "train.jsonl:1: missing column 'label' in a train example" in _err(
        tmp_path, "generic_reg", "train.jsonl", b'{"text": "a", "label": null}\n')


@pytest.mark.parametrize("doc,expect", [
    ({"version": "1.1"}, "expected SQuAD JSON with a top-level 'data' list"),
    ({"data": [{"paragraphs": {"context": "c"}}]}, "data[0].paragraphs: expected list, got dict"),
    ({"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}, "data[0].paragraphs[0].context: expected str, got int"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q"}]}]}]}, "a question lacks 'id' or 'question'"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "?", "answers": [
        {"text": "b", "answer_start": "x"}]}]}]}]}, "data[0].paragraphs[0]: malformed record (ValueError"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "?", "answers": [
        {"text": "b"}]}]}]}]}, "data[0].paragraphs[0]: missing field 'answer_start'"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "?", "answers": [
        {"text": "c", "answer_start": -1}]}]}]}]}, "answer 'c' is not at character -1 of the context"),
])
def test_malformed_squad(tmp_path, doc, expect):
    assert expect in _err(tmp_path, "squad", "train-v1.1.json", json.dumps(doc).encode())
