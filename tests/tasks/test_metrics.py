"""megaprompt's use of scikit-learn, SciPy and seqeval, checked on hand-computed cases and conlleval's counts
(not the libraries against themselves), and the official SQuAD / MultiRC / ReCoRD logic on hand cases."""
from __future__ import annotations

import math

import pytest

from megaprompt.tasks import metrics as M


def test_classification_hand_cases():
    y, p = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    assert M.accuracy(y, p) == pytest.approx(4 / 6)
    # per class (P, R, F1): 0 = (1/2, 1/2, 1/2); 1 = (2/3, 1, 4/5); 2 = (1, 1/2, 2/3)
    assert M.macro_f1(y, p) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # binary, positive 1: tp 1, fp 1, fn 2 -> P 1/2, R 1/3, F1 2/5; the negative class is not averaged in
    assert M.f1_binary([1, 1, 1, 0, 0], [1, 0, 0, 1, 0]) == pytest.approx(2 / 5)
    assert M.f1_binary(["yes", "no"], ["yes", "yes"], positive="yes") == pytest.approx(2 / 3)
    assert M.f1_binary([0, 0], [0, 0]) == 0.0                      # no positive anywhere: 0, not an error
    # MCC: tp 1, fn 1, tn 2, fp 0 -> (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3)
    assert M.mcc([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / math.sqrt(12))
    assert M.mcc([1, 0, 1], [0, 1, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="2 gold vs 1 predictions"):
        M.accuracy([0, 1], [0])


def test_macro_f1_counts_predicted_only_labels():
    # class 2 is only predicted: F1 0 and it counts in the mean (sklearn's union of labels)
    assert M.macro_f1([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_degenerate_inputs_score_zero():
    assert M.mcc([1, 1, 1], [1, 1, 1]) == 0.0
    assert M.pearson([1.0, 1.0, 1.0], [0.5, 1.0, 2.0]) == 0.0 == M.spearman([2.0, 2.0], [1.0, 3.0])
    assert M.pearson([1.0], [2.0]) == 0.0 and M.accuracy([], []) == 0.0 and M.macro_f1([], []) == 0.0


def test_correlations_hand_cases():
    # x = 1,2,3; y = 1,2,4: cov 3, |dx| sqrt 2, |dy| sqrt(42)/3 -> r = 9 / sqrt 84
    assert M.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    # ties take average ranks: x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4 -> 4.5 / sqrt(4.5 * 5)
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert M.spearman([1, 2, 3], [1, 2, 40]) == pytest.approx(1.0)


def test_span_f1_is_conlleval_not_strict_iob2():
    # conlleval (seqeval's default mode): I- after O or another type opens a chunk, so both predicted chunks
    # count; strict IOB2 would find no chunk in the prediction and score 0
    assert M.span_prf([["B-PER", "I-PER", "O", "B-LOC"]], [["I-PER", "I-PER", "O", "I-LOC"]])["f1"] == 1.0
    # a type change ends a chunk: PER(0,0) and LOC(1,1), neither equals the gold PER(0,1)
    r = M.span_prf([["B-PER", "I-PER", "O", "O"]], [["B-PER", "I-LOC", "O", "O"]])
    assert r == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_span_f1_conlleval_counts():
    # 3 sentences; gold has 5 phrases, the prediction finds 4, of which 3 are correct (as conlleval would count:
    # "found: 4 phrases; correct: 3", precision 75.00%, recall 60.00%, FB1 66.67)
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"], ["O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "O"], ["O", "O"]]
    r = M.span_prf(gold, pred)
    assert r["precision"] == pytest.approx(3 / 4) and r["recall"] == pytest.approx(3 / 5)
    assert r["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_get_spans_hand_cases():
    assert M.get_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"]) == [
        ("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5)]
    assert M.get_spans(["U-Org", "B-Loc", "I-Loc", "L-Loc", "O"]) == [("Org", 0, 0), ("Loc", 1, 3)]
    assert M.get_spans(["B-ARGM-TMP", "I-ARGM-TMP", "B-V"]) == [("ARGM-TMP", 0, 1), ("V", 2, 2)]


def test_span_f1_bilou_ignores_types_and_checks_lengths():
    # BILOU: U- and L- close chunks: the prediction has Org(0), Loc(1), Loc(2); gold Org(0), Loc(1-2)
    assert M.span_prf([["U-Org", "B-Loc", "L-Loc"]], [["U-Org", "U-Loc", "L-Loc"]])["f1"] == pytest.approx(0.4)
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
