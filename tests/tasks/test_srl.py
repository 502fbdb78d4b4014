"""SRL: the three accepted layouts, predicate marking in the input, label set from training data, V spans left
out of the score, and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from seqeval.metrics import f1_score as seq_f1

from megaprompt.tasks import get_task
from megaprompt.tasks.io import DataError

from .test_ner import GOLD_CONLL

TRAIN = """1 The cat sat on the mat . ||| B-A0 I-A0 B-V B-AM-LOC I-AM-LOC I-AM-LOC O
0 Stocks fell sharply yesterday . ||| B-V O O O O
1 Stocks fell sharply yesterday . ||| B-A1 B-V B-AM-MNR B-AM-TMP O
"""
DEV = """2 John quickly left . ||| B-A0 B-AM-MNR B-V O
"""


@pytest.fixture
def srl_dir(tmp_path):
    (tmp_path / "conll05.train.txt").write_text(TRAIN)
    (tmp_path / "conll05.devel.txt").write_text(DEV)
    return tmp_path


def test_label_set_from_train_and_predicate_marking(srl_dir, tokenizer):
    task = get_task("conll05", data_dir=str(srl_dir))
    assert task.label_names[0] == "O" and {"B-A0", "I-A0", "B-V", "B-AM-LOC", "I-AM-LOC", "B-AM-TMP"} <= set(
        task.label_names)
    ex = task.load(str(srl_dir), "train")
    assert ex[0]["predicate_index"] == 1 and ex[1]["predicate_index"] == 0
    enc = task.encode(ex, tokenizer, 64)
    assert tokenizer.decode(enc.features[0]["input_ids"]) == "[CLS] the cat sat on the mat. [SEP] cat [SEP]"
    # the predicate segment is never labelled
    f = enc.features[0]
    sep = f["input_ids"].index(tokenizer.sep_token_id)
    assert all(lab == -100 for lab in f["labels"][sep:])
    assert sum(lab != -100 for lab in f["labels"]) == 7


def test_score_leaves_out_v_and_matches_seqeval(srl_dir, tokenizer):
    task = get_task("conll05", data_dir=str(srl_dir))
    enc = task.encode(task.load(str(srl_dir), "train"), tokenizer, 64)
    rng = np.random.default_rng(0)
    outs = [rng.random((len(f["input_ids"]), len(task.label_names))) for f in enc.features]
    preds = task.predict(outs, enc)
    gold = [e["tags"] for e in enc.examples]
    no_v = [[("O" if t.endswith("-V") else t) for t in s] for s in gold]
    no_v_p = [[("O" if t.endswith("-V") else t) for t in s] for s in preds]
    assert task.evaluate(outs, enc)["f1"] == pytest.approx(100 * seq_f1(no_v, no_v_p))
    # perfect argument spans with a wrong predicate span still score 100
    perfect = []
    for f in enc.features:
        z = np.zeros((len(f["input_ids"]), len(task.label_names)))
        for j, lab in enumerate(f["labels"]):
            z[j, 0 if lab < 0 or task.label_names[lab] == "B-V" else lab] = 1
        perfect.append(z)
    assert task.evaluate(perfect, enc)["f1"] == pytest.approx(100.0)


def test_unseen_dev_tag_is_ignored_in_loss_but_scored(srl_dir, tokenizer, caplog):
    (srl_dir / "conll05.devel.txt").write_text("0 Go home now . ||| B-V B-AM-DIR B-AM-XYZ O\n")
    task = get_task("conll05", data_dir=str(srl_dir))
    with caplog.at_level("WARNING"):
        enc = task.encode(task.load(str(srl_dir), "dev"), tokenizer, 32)
    assert "2 tags outside the label set" in caplog.text
    assert enc.examples[0]["tags"][2] == "B-AM-XYZ"


def test_jsonl_and_columns_layouts(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"tokens": ["I", "ran"], "predicate_index": 1,
                                                      "tags": ["B-A0", "B-V"]}) + "\n")
    t12 = get_task("conll12", data_dir=str(tmp_path))
    assert t12.load(str(tmp_path), "train")[0]["tags"] == ["B-A0", "B-V"]
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "train.english.v4_gold_conll").write_text(GOLD_CONLL)
    ex = get_task("conll12", data_dir=str(tmp_path)).load(str(tmp_path), "train")
    assert len(ex) == 1   # second sentence has no predicate columns
    assert ex[0]["tags"] == ["B-ARG0", "I-ARG0", "B-V", "B-ARGM-TMP", "I-ARGM-TMP"] and ex[0]["predicate_index"] == 2
    props = "The - (A0* *\ncat - *) *\nsat sit (V*V) *\nand - * *\nate eat * (V*)\n"
    (tmp_path / "train.props").write_text(props)
    ex = get_task("conll05", data_dir=str(tmp_path)).load(str(tmp_path), "train")
    assert [e["tags"] for e in ex] == [["B-A0", "I-A0", "B-V", "O", "O"], ["O", "O", "O", "O", "B-V"]]


def test_errors(tmp_path):
    (tmp_path / "conll05.train.txt").write_text("1 a b c ||| O B-V\n")
    with pytest.raises(DataError, match=r"conll05.train.txt:1: 3 tokens but 2 tags"):
        get_task("conll05", data_dir=str(tmp_path))
    (tmp_path / "conll05.train.txt").write_text("7 a b ||| O B-V\n")
    with pytest.raises(DataError, match=r"conll05.train.txt:1: predicate index 7 outside"):
        get_task("conll05").load(str(tmp_path), "train")
    (tmp_path / "conll05.train.txt").write_text("a b O B-V\n")
    with pytest.raises(DataError, match=r"conll05.train.txt:1: expected '<predicate index> tokens \|\|\| tags'"):
        get_task("conll05").load(str(tmp_path), "train")
    with pytest.raises(ValueError, match="no label set"):
        get_task("conll05").encode([], None, 8)
