"""Submission writers: SuperGLUE jsonl, GLUE TSV, SQuAD predictions JSON, CoNLL tags."""
from __future__ import annotations

import json

from megaprompt.tasks import EncodedSplit, get_task
from megaprompt.tasks.submission import write_glue, write_predictions, write_squad, write_superglue, write_tags


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_superglue(tmp_path):
    ex = [{"idx": 0}, {"idx": 1}]
    assert _lines(write_superglue(tmp_path / "BoolQ.jsonl", "boolq", ex, ["True", "False"])) == [
        {"idx": 0, "label": "true"}, {"idx": 1, "label": "false"}]
    assert _lines(write_superglue(tmp_path / "COPA.jsonl", "copa", ex, [1, 0])) == [
        {"idx": 0, "label": 1}, {"idx": 1, "label": 0}]
    assert _lines(write_superglue(tmp_path / "CB.jsonl", "cb", ex, ["neutral", "entailment"]))[0]["label"] == "neutral"
    mr = [{"idx": {"paragraph": 0, "question": 0, "answer": 0}}, {"idx": {"paragraph": 0, "question": 0, "answer": 1}},
          {"idx": {"paragraph": 0, "question": 1, "answer": 2}}, {"idx": {"paragraph": 1, "question": 2, "answer": 3}}]
    out = _lines(write_superglue(tmp_path / "MultiRC.jsonl", "multirc", mr, ["1", "0", "1", "0"]))
    assert out == [{"idx": 0, "passage": {"questions": [
        {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
        {"idx": 1, "answers": [{"idx": 2, "label": 1}]}]}},
        {"idx": 1, "passage": {"questions": [{"idx": 2, "answers": [{"idx": 3, "label": 0}]}]}}]


def test_glue_and_dispatch(tmp_path):
    ex = [{"idx": "0"}, {"idx": "1"}]
    p = write_glue(tmp_path / "STS-B.tsv", "stsb", ex, [1.23456, 4.0])
    assert p.read_text() == "index\tprediction\n0\t1.235\n1\t4.000\n"
    split = EncodedSplit(features=[], examples=ex)
    p = write_predictions(get_task("mnli"), "test_mismatched", split, ["entailment", "neutral"], tmp_path)
    assert p.name == "MNLI-mm.tsv" and p.read_text().splitlines()[1] == "0\tentailment"
    p = write_predictions(get_task("sst2"), "test", split, ["1", "0"], tmp_path)
    assert p.name == "SST-2.tsv"
    p = write_predictions(get_task("rte"), "test", split, ["entailment", "not_entailment"], tmp_path)
    assert p.name == "RTE.jsonl" and _lines(p)[1] == {"idx": "1", "label": "not_entailment"}


def test_squad_and_tags(tmp_path):
    p = write_squad(tmp_path / "pred.json", [{"id": "a"}, {"id": "b"}], ["Paris", ""])
    assert json.loads(p.read_text()) == {"a": "Paris", "b": ""}
    p = write_tags(tmp_path / "t.txt", [{"tokens": ["EU", "rejects"]}], [["B-ORG", "O"]])
    assert p.read_text() == "EU\tB-ORG\nrejects\tO\n\n"


def test_write_submission_entry_point(tmp_path):
    from megaprompt.tasks.submission import write_submission
    split = EncodedSplit(features=[], examples=[{"idx": 3}])
    files = write_submission(get_task("copa"), [1], split, tmp_path, "test")
    assert [f.name for f in files] == ["COPA.jsonl"] and _lines(files[0]) == [{"idx": 3, "label": 1}]
