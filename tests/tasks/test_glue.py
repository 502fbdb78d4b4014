"""GLUE TSV layouts of all nine tasks on tiny fixtures, metrics wiring, SST-2 real counts, errors."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.io import DataError

from .conftest import shared

T = "\t"
FIXTURES = {   # task: {file: lines}
    "cola": {"train.tsv": [f"gj04{T}1{T}{T}The sailors rode the breeze.", f"gj04{T}0{T}*{T}The more we study verbs."],
             "test.tsv": [f"index{T}sentence", f"0{T}Bill whistled past the house."]},
    "sst2": {"train.tsv": [f"sentence{T}label", f"a gorgeous film {T}1", f"dull and flat {T}0"]},
    "mrpc": {"train.tsv": [f"Quality{T}#1 ID{T}#2 ID{T}#1 String{T}#2 String",
                           f"1{T}1{T}2{T}He said \"yes\".{T}He agreed.", f"0{T}3{T}4{T}Rain fell.{T}Sun shone."]},
    "qqp": {"train.tsv": [f"id{T}qid1{T}qid2{T}question1{T}question2{T}is_duplicate",
                          f"5{T}1{T}2{T}How old are you?{T}What is your age?{T}1", f"6{T}3{T}4{T}Why?{T}Where?{T}0"]},
    "stsb": {"train.tsv": [T.join(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                   "sentence1", "sentence2", "score"]),
                           f"0{T}main{T}f{T}2012{T}1{T}none{T}none{T}A plane takes off.{T}A plane is taking off.{T}5.000",
                           f"1{T}main{T}f{T}2012{T}4{T}none{T}none{T}A man plays.{T}A dog runs.{T}0.500"]},
    "mnli": {"dev_mismatched.tsv": [
        f"index{T}promptID{T}pairID{T}genre{T}sentence1_binary_parse{T}sentence2_binary_parse{T}sentence1_parse{T}"
        f"sentence2_parse{T}sentence1{T}sentence2{T}label1{T}label2{T}label3{T}label4{T}label5{T}gold_label",
        f"0{T}1{T}1e{T}letters{T}( x ){T}( y ){T}(X){T}(Y){T}Your gift is appreciated.{T}Thanks for the gift.{T}"
        f"entailment{T}entailment{T}neutral{T}entailment{T}entailment{T}entailment"]},
    "qnli": {"train.tsv": [f"index{T}question{T}sentence{T}label", f"0{T}Who?{T}Him.{T}entailment"]},
    "glue_rte": {"train.tsv": [f"index{T}sentence1{T}sentence2{T}label", f"0{T}A b.{T}B.{T}not_entailment"]},
    "wnli": {"train.tsv": [f"index{T}sentence1{T}sentence2{T}label", f"0{T}I put it.{T}It fit.{T}1"]},
}


def _write(d, files):
    for name, lines in files.items():
        (d / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_glue_layouts(name, tmp_path, tokenizer):
    _write(tmp_path, FIXTURES[name])
    task = get_task(name)
    split = "dev_mismatched" if name == "mnli" else "train"
    ex = task.load(str(tmp_path), split)
    assert len(ex) == len(FIXTURES[name][task.splits[split]]) - (0 if name == "cola" else 1)
    assert all(isinstance(e["text"], str) and e["text"] for e in ex)
    enc = task.encode(ex, tokenizer, 32)
    if task.head == "reg":
        assert [f["labels"] for f in enc.features] == [5.0, 0.5]
    else:
        assert all(0 <= f["labels"] < len(task.label_names) for f in enc.features)
    if name == "mrpc":
        assert ex[0]["text"] == 'He said "yes".' and ex[0]["text_pair"] == "He agreed."   # no CSV quoting
    if name == "cola":
        assert [e["label"] for e in ex] == ["1", "0"]
        test = task.load(str(tmp_path), "test")
        assert test[0]["text"] == "Bill whistled past the house." and test[0]["label"] is None


def test_metric_wiring_vs_references(tmp_path, tokenizer):
    rng = np.random.default_rng(0)
    lines = [f"index{T}sentence1{T}sentence2{T}label"] + [f"{i}{T}s{i}{T}t{i}{T}{i % 2}" for i in range(40)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    task = get_task("wnli")
    enc = load_split(task, str(tmp_path), "train", tokenizer, 16)
    gold = np.array([f["labels"] for f in enc.features])
    pred = np.where(rng.random(40) < 0.7, gold, 1 - gold)
    assert task.evaluate(list(np.eye(2)[pred]), enc)["accuracy"] == pytest.approx(100 * skm.accuracy_score(gold, pred))
    mrpc = get_task("mrpc")
    rows = [f"Quality{T}#1 ID{T}#2 ID{T}#1 String{T}#2 String"] + [f"{i % 2}{T}1{T}2{T}a{i}{T}b{i}" for i in range(40)]
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n")
    enc = load_split(mrpc, str(tmp_path), "dev", tokenizer, 16)
    m = mrpc.evaluate(list(np.eye(2)[pred]), enc)
    assert m["f1"] == pytest.approx(100 * skm.f1_score(gold, pred))
    cola = get_task("cola")
    (tmp_path / "dev.tsv").write_text("".join(f"x{T}{i % 2}{T}{T}s{i}\n" for i in range(40)))
    enc = load_split(cola, str(tmp_path), "dev", tokenizer, 16)
    assert cola.evaluate(list(np.eye(2)[pred]), enc)["mcc"] == pytest.approx(100 * skm.matthews_corrcoef(gold, pred))


def test_stsb_regression_metrics(tmp_path, tokenizer):
    rng = np.random.default_rng(1)
    y = np.round(rng.random(30) * 5, 2)
    head = f"index{T}genre{T}filename{T}year{T}old_index{T}source1{T}source2{T}sentence1{T}sentence2{T}score"
    rows = [head] + [f"{i}{T}g{T}f{T}y{T}o{T}s{T}s{T}a{i}{T}b{i}{T}{v}" for i, v in enumerate(y)]
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n")
    task = get_task("stsb")
    enc = load_split(task, str(tmp_path), "dev", tokenizer, 16)
    p = y + rng.normal(0, 1, 30)
    m = task.evaluate([np.array([v]) for v in p], enc)
    assert m["pearson"] == pytest.approx(100 * stats.pearsonr(y, p)[0])
    assert m["spearman"] == pytest.approx(100 * stats.spearmanr(y, p)[0])


def test_real_sst2_counts():
    d = shared("glue", "SST-2")
    task = get_task("sst2")
    assert [len(task.load(str(d), s)) for s in ("train", "dev", "test")] == [67349, 872, 1821]


def test_errors(tmp_path):
    task = get_task("sst2")
    (tmp_path / "train.tsv").write_text(f"sentence{T}label\ngood{T}1\nbad{T}0{T}extra\n")
    with pytest.raises(DataError, match=r"train.tsv:3: expected 2 fields, found 3"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.tsv").write_text(f"text{T}label\ngood{T}1\n")
    with pytest.raises(DataError, match=r"train.tsv:1: missing column\(s\) \['sentence'\]"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.tsv").write_text(f"sentence{T}label\ngood{T}2\n")
    with pytest.raises(DataError, match=r"train.tsv:2: label '2' is not in the task's label set"):
        task.load(str(tmp_path), "train")
    (tmp_path / "train.tsv").write_text(f"sentence{T}label\n")
    with pytest.raises(DataError, match="no examples"):
        task.load(str(tmp_path), "train")
