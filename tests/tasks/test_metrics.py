"""Metrics against independent references: scikit-learn, scipy, seqeval, and hand-computed cases."""
from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score as seq_p
from seqeval.metrics import recall_score as seq_r
from sklearn import metrics as skm

from megaprompt.tasks import metrics as M


@pytest.mark.parametrize("seed", range(5))
def test_classification_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 200).tolist()
    p = [t if rng.random() < 0.6 else int(rng.integers(0, 3)) for t in y]
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert M.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert M.mcc(y, p) == pytest.approx(skm.matthews_corrcoef(y, p))
    yb, pb = [v % 2 for v in y], [v % 2 for v in p]
    assert M.f1_binary(yb, pb) == pytest.approx(skm.f1_score(yb, pb))
    assert M.mcc(yb, pb) == pytest.approx(skm.matthews_corrcoef(yb, pb))


def test_macro_f1_counts_predicted_only_labels_like_sklearn():
    y, p = [0, 0, 1, 1], [0, 2, 1, 1]
    assert M.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_mcc_degenerate_is_zero():
    assert M.mcc([1, 1, 1], [1, 1, 1]) == 0.0 == skm.matthews_corrcoef([1, 1, 1], [1, 1, 1])


@pytest.mark.parametrize("seed", range(3))
def test_correlations_vs_scipy(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.random(100) * 5, 1)          # rounding creates ties for spearman
    y = np.round(x + rng.normal(0, 1, 100), 1)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def _random_tags(rng: random.Random, n: int, types=("PER", "LOC", "ORG")) -> list[str]:
    return [rng.choice(["O", "O", f"B-{rng.choice(types)}", f"I-{rng.choice(types)}"]) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_span_f1_vs_seqeval_including_invalid_sequences(seed):
    rng = random.Random(seed)
    gold = [_random_tags(rng, rng.randint(1, 12)) for _ in range(30)]
    pred = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "I-PER"]) for t in g] for g in gold]
    ours = M.span_prf(gold, pred)
    assert ours["f1"] == pytest.approx(seq_f1(gold, pred))
    assert ours["precision"] == pytest.approx(seq_p(gold, pred))
    assert ours["recall"] == pytest.approx(seq_r(gold, pred))


def test_get_spans_hand_cases():
    assert M.get_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"]) == [
        ("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5)]
    assert M.get_spans(["U-Org", "B-Loc", "I-Loc", "L-Loc", "O"]) == [("Org", 0, 0), ("Loc", 1, 3)]
    assert M.get_spans(["B-ARGM-TMP", "I-ARGM-TMP", "B-V"]) == [("ARGM-TMP", 0, 1), ("V", 2, 2)]


def test_span_f1_ignores_types_and_checks_lengths():
    gold = [["B-A0", "B-V", "B-A1"]]
    pred = [["B-A0", "B-V", "O"]]
    assert M.span_prf(gold, pred)["f1"] == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert M.span_prf(gold, pred, ignore_types=("V",))["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 tags but prediction has 2"):
        M.span_prf(gold, [["O", "O"]])


def test_iob1_to_iob2_and_bilou():
    assert M.iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]
    assert M.iob1_to_iob2(["B-PER", "I-PER"]) == ["B-PER", "I-PER"]   # IOB2 input unchanged
    assert M.bilou_to_bio(["U-Loc", "B-Org", "I-Org", "L-Org", "O"]) == ["B-Loc", "B-Org", "I-Org", "I-Org", "O"]


def test_squad_normalisation_hand_cases():
    assert M.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert M.normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert M.normalize_answer("theater") == "theater"              # article only as a whole word
    assert M.squad_em("the Denver Broncos", "Denver Broncos") == 1.0
    assert M.squad_f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert M.squad_f1("", "") == 1.0 and M.squad_f1("x", "") == 0.0
    assert M.max_over_gold(M.squad_em, "Broncos", ["Denver", "broncos"]) == 1.0
    assert M.max_over_gold(M.squad_f1, "", []) == 1.0   # v2 no-answer
    s = M.squad_scores({"a": "Paris", "b": "London"}, {"a": ["paris"], "b": ["Berlin"], "c": ["x"]})
    assert s == {"em": pytest.approx(1 / 3), "f1": pytest.approx(1 / 3)}


def test_multirc_hand_case():
    q = ["p0-q0", "p0-q0", "p0-q1", "p0-q1", "p1-q0"]
    y = [1, 0, 1, 1, 0]
    p = [1, 0, 1, 0, 1]
    # F1a over options: tp=2 fp=1 fn=1 -> P=R=2/3; EM: only p0-q0 fully right -> 1/3
    assert M.multirc_scores(q, y, p) == {"f1a": pytest.approx(2 / 3), "em": pytest.approx(1 / 3)}


def test_record_hand_case():
    preds = {0: "Barack Obama", 1: "the U.S.", 2: "Paris"}
    golds = {0: ["Obama", "Barack Obama"], 1: ["U.S"], 2: ["London", "UK"]}
    s = M.record_scores(preds, golds)
    assert s["em"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    preds[0] = "Obama speech"       # F1 max over golds: vs "Obama" 2*(1/2*1)/(1.5) = 2/3
    assert M.record_scores(preds, golds)["f1"] == pytest.approx((2 / 3 + 1) / 3)
