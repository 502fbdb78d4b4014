"""NER: CoNLL-2003 (IOB1 -> IOB2, -DOCSTART-), CoNLL-2004 (BILOU -> BIO), OntoNotes (CoNLL-2012 brackets);
first-sub-word labelling; word-level decoding scored like seqeval; real counts; errors."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from seqeval.metrics import f1_score as seq_f1

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.io import DataError
from megaprompt.tasks.metrics import get_spans

from .conftest import shared

CONLL03 = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
Lamb-Hamilton NNP I-NP I-PER
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Lisbon NNP I-NP I-LOC
Paris NNP I-NP B-LOC
"""


def test_conll03_iob1_to_iob2_and_docstart(tmp_path):
    (tmp_path / "eng.train").write_text(CONLL03)
    ex = get_task("conll03").load(str(tmp_path), "train")
    assert len(ex) == 2
    assert ex[0]["tokens"][:3] == ["EU", "rejects", "German"]
    assert ex[0]["tags"] == ["B-ORG", "O", "B-MISC", "O", "B-PER", "O"]
    assert ex[1]["tags"] == ["B-PER", "I-PER", "B-LOC", "B-LOC"]


def test_first_subword_labelling_and_decoding(tmp_path, tokenizer):
    (tmp_path / "eng.train").write_text(CONLL03)
    task = get_task("conll03")
    enc = task.encode(task.load(str(tmp_path), "train"), tokenizer, 64)
    f = enc.features[0]
    toks = tokenizer.convert_ids_to_tokens(f["input_ids"])
    labelled = [(t, task.label_names[lab]) for t, lab in zip(toks, f["labels"]) if lab != -100]
    assert labelled == [("eu", "B-ORG"), ("rejects", "O"), ("german", "B-MISC"), ("call", "O"), ("lamb", "B-PER"),
                        (".", "O")]
    assert f["labels"][0] == -100 and f["labels"][-1] == -100
    assert sum(lab != -100 for lab in f["labels"]) == 6 < len(toks) - 2   # "Lamb-Hamilton" has continuations
    # logits that put the gold label on first sub-words decode to the gold tags
    outs = []
    for feat in enc.features:
        z = np.zeros((len(feat["input_ids"]) + 3, len(task.label_names)))   # batch padding is ignored
        for j, lab in enumerate(feat["labels"]):
            z[j, lab if lab >= 0 else 1] = 1.0   # continuations get a wrong label: must not matter
        outs.append(z)
    assert task.predict(outs, enc) == [e["tags"] for e in enc.examples]
    assert task.evaluate(outs, enc)["f1"] == pytest.approx(100.0)


def test_random_predictions_scored_like_seqeval(tmp_path, tokenizer):
    (tmp_path / "eng.train").write_text(CONLL03 * 5)
    task = get_task("conll03")
    enc = task.encode(task.load(str(tmp_path), "train"), tokenizer, 64)
    rng = np.random.default_rng(0)
    outs = [rng.random((len(f["input_ids"]), len(task.label_names))) for f in enc.features]
    preds = task.predict(outs, enc)
    gold = [e["tags"] for e in enc.examples]
    assert task.evaluate(outs, enc)["f1"] == pytest.approx(100 * seq_f1(gold, preds))


def test_truncated_words_are_predicted_o(tmp_path, tokenizer, caplog):
    (tmp_path / "eng.train").write_text(CONLL03)
    task = get_task("conll03")
    with caplog.at_level("WARNING"):
        enc = task.encode(task.load(str(tmp_path), "train"), tokenizer, 6)
    assert "conll03: truncated 1 of 2 sentences to max_seq_len=6" in caplog.text
    outs = [np.tile(np.eye(len(task.label_names))[3], (6, 1)) for _ in enc.features]   # B-ORG everywhere
    preds = task.predict(outs, enc)
    assert preds[0][-1] == "O" and preds[0][0] == "B-ORG"


def test_real_conll03_counts():
    d = shared("conll2003")
    task = get_task("conll03")
    for split, (n, ents) in {"train": (14041, 23499), "dev": (3250, 5942), "test": (3453, 5648)}.items():
        ex = task.load(str(d), split)
        assert len(ex) == n
        assert sum(len(get_spans(e["tags"])) for e in ex) == ents


def test_conll04_bilou(tmp_path):
    rows = [{"tokens": ["John", "Smith", "visited", "New", "York", "City"],
             "tags": ["B-Peop", "L-Peop", "O", "B-Loc", "I-Loc", "L-Loc"], "relations": []},
            {"tokens": ["IBM"], "tags": ["U-Org"]}]
    (tmp_path / "conll04_train.json").write_text(json.dumps(rows))
    ex = get_task("conll04").load(str(tmp_path), "train")
    assert ex[0]["tags"] == ["B-Peop", "I-Peop", "O", "B-Loc", "I-Loc", "I-Loc"] and ex[1]["tags"] == ["B-Org"]
    rows[1]["tags"] = ["U-Org", "O"]
    (tmp_path / "conll04_train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"conll04_train.json: sentence 1: 1 tokens but 2 tags"):
        get_task("conll04").load(str(tmp_path), "train")
    rows[1]["tags"] = ["U-Animal"]
    (tmp_path / "conll04_train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"tag 'B-Animal' is not in the task's label set"):
        get_task("conll04").load(str(tmp_path), "train")


def test_real_conll04_counts(tokenizer):
    d = shared("conll04")
    task = get_task("conll04")
    assert [len(task.load(str(d), s)) for s in ("train", "dev", "test")] == [922, 231, 288]
    enc = load_split(task, str(d), "dev", tokenizer, 128)
    rng = random.Random(0)
    outs = [np.eye(len(task.label_names))[[lab if lab >= 0 and rng.random() < 0.8 else 0 for lab in f["labels"]]]
            for f in enc.features]
    gold = [e["tags"] for e in enc.examples]
    assert task.evaluate(outs, enc)["f1"] == pytest.approx(100 * seq_f1(gold, task.predict(outs, enc)))


GOLD_CONLL = """#begin document (nw/wsj/00/wsj_0001); part 000
nw/wsj/00/wsj_0001 0 0 Pierre NNP (TOP(S(NP* - - - - (PERSON* (ARG0* (0
nw/wsj/00/wsj_0001 0 1 Vinken NNP * - - - - *) *) 0)
nw/wsj/00/wsj_0001 0 2 joined VBD (VP* join 01 - - * (V*) -
nw/wsj/00/wsj_0001 0 3 Nov. NNP (NP* - - - - (DATE* (ARGM-TMP* -
nw/wsj/00/wsj_0001 0 4 29 CD *)) - - - - *) *) -

nw/wsj/00/wsj_0001 0 0 Elsevier NNP (TOP(S(NP* - - - - (ORG) -
nw/wsj/00/wsj_0001 0 1 rose VBD (VP* - - - - * -

#end document
"""


def test_ontonotes_conll2012_brackets(tmp_path):
    (tmp_path / "train.english.v4_gold_conll").write_text(GOLD_CONLL)
    ex = get_task("ontonotes").load(str(tmp_path), "train")
    assert [e["tokens"] for e in ex] == [["Pierre", "Vinken", "joined", "Nov.", "29"], ["Elsevier", "rose"]]
    assert ex[0]["tags"] == ["B-PERSON", "I-PERSON", "O", "B-DATE", "I-DATE"] and ex[1]["tags"] == ["B-ORG", "O"]
    # folder layout: development/ searched recursively
    sub = tmp_path / "development" / "data" / "english"
    sub.mkdir(parents=True)
    (sub / "a.gold_conll").write_text(GOLD_CONLL)
    assert len(get_task("ontonotes").load(str(tmp_path), "dev")) == 2


def test_ontonotes_bad_brackets(tmp_path):
    bad = GOLD_CONLL.replace("*) *) 0)", "* *) 0)")
    (tmp_path / "train.english.v4_gold_conll").write_text(bad)
    with pytest.raises(DataError, match=r"gold_conll:2: span '\(DATE\*' opens inside the unclosed span 'PERSON'"):
        get_task("ontonotes").load(str(tmp_path), "train")


def test_column_errors(tmp_path):
    (tmp_path / "eng.train").write_text("EU NNP I-NP I-ORG\nrejects VBZ I-VP\n")
    with pytest.raises(DataError, match=r"eng.train:2: expected 4 columns like the lines before, found 3"):
        get_task("conll03").load(str(tmp_path), "train")
    (tmp_path / "eng.train").write_text("EU NNP I-NP I-FOO\n")
    with pytest.raises(DataError, match=r"eng.train:1: tag 'B-FOO' is not in the task's label set"):
        get_task("conll03").load(str(tmp_path), "train")
    (tmp_path / "eng.train").write_text("-DOCSTART- -X- O O\n\n")
    with pytest.raises(DataError, match=r"eng.train: file has no token lines"):
        get_task("conll03").load(str(tmp_path), "train")
