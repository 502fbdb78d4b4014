"""SQuAD v1.1 / v2.0: sliding windows, answer-token mapping through offsets, n-best decoding, no-answer
threshold tuning, the gold round trip on the real dev set (EM >= 99), and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from megaprompt.tasks import get_task
from megaprompt.tasks.io import DataError
from megaprompt.tasks.qa import best_threshold

from .conftest import shared

FILLER = " ".join(f"Sentence number {i} talks about nothing in particular." for i in range(30))
CONTEXT = f"The Eiffel Tower is in Paris. {FILLER} The tower was completed in 1889 by Gustave Eiffel's company."


def squad_json(questions, version_2=False):
    qas = []
    for qid, q, answer, impossible in questions:
        answers = [] if answer is None else [{"text": answer, "answer_start": CONTEXT.index(answer)}]
        item = {"id": qid, "question": q, "answers": answers}
        if version_2:
            item["is_impossible"] = impossible
        qas.append(item)
    return {"version": "1.1", "data": [{"title": "Eiffel", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


QS = [("q1", "Where is the Eiffel Tower?", "Paris", False),
      ("q2", "When was the tower completed?", "1889", False),
      ("q3", "Who built the tower?", "Gustave Eiffel's company", False)]


def gold_logits(enc):
    outs = []
    for f in enc.features:
        z = np.zeros((len(f["input_ids"]), 2), dtype=np.float32)
        if f["start_positions"] > 0:
            z[f["start_positions"], 0] = z[f["end_positions"], 1] = 10.0
        outs.append(z)
    return outs


def test_windows_and_answer_positions(tmp_path, tokenizer):
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(QS)))
    task = get_task("squad")
    ex = task.load(str(tmp_path), "dev")
    enc = task.encode(ex, tokenizer, 64)
    per_q = [sum(f["example_index"] == i for f in enc.features) for i in range(3)]
    assert all(n > 3 for n in per_q)                           # long context -> several windows each
    assert all(len(f["input_ids"]) <= 64 for f in enc.features)
    for f in enc.features:
        e = ex[f["example_index"]]
        if f["start_positions"] > 0:                           # answer tokens map back to the answer text
            s, t = f["offset_mapping"][f["start_positions"]], f["offset_mapping"][f["end_positions"]]
            assert e["context"][s[0]:t[1]] == e["answers"][0]["text"]
        assert f["offset_mapping"][0] == (-1, -1) or list(f["offset_mapping"][0]) == [-1, -1]
    # consecutive windows of one question overlap (stride) and together cover the whole context
    ctx = [[o for o in f["offset_mapping"] if o[0] >= 0] for f in enc.features if f["example_index"] == 0]
    assert ctx[0][0][0] == 0 and ctx[-1][-1][1] == len(CONTEXT)
    assert all(b[0][0] < a[-1][1] for a, b in zip(ctx, ctx[1:]))
    assert all(any(f["start_positions"] > 0 for f in enc.features if f["example_index"] == i) for i in range(3))
    assert task.evaluate(gold_logits(enc), enc) == {"em": 100.0, "f1": 100.0}
    assert task.predict(gold_logits(enc), enc) == ["Paris", "1889", "Gustave Eiffel's company"]


def test_nbest_respects_max_answer_len_and_order(tmp_path, tokenizer):
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(QS[:1])))
    task = get_task("squad", max_answer_len=3)
    enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 384)
    assert len(enc) == 1
    f = enc.features[0]
    z = np.zeros((len(f["input_ids"]), 2))
    s = f["start_positions"]
    z[s, 0] = 5.0
    z[s + 10, 1] = 6.0          # best end is too far: must fall back to a span within 3 tokens
    z[s, 1] = 4.0
    z[s + 1, 0] = 4.9
    assert task.predict([z], enc) == ["Paris"]
    z[s + 1, 1] = 4.5          # end before start (s+1 > s) is never chosen for start s+1... but (s, s+1) is fine
    assert task.predict([z], enc) == ["Paris."]


def test_squad_v2_threshold(tmp_path, tokenizer):
    qs = QS[:2] + [("q4", "Who painted the tower?", None, True)]
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(squad_json(qs, version_2=True)))
    task = get_task("squad_v2")
    enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 384)
    assert enc.features[2]["start_positions"] == 0 and enc.features[2]["end_positions"] == 0
    outs = gold_logits(enc)
    outs[2][0] = [3.0, 3.0]                       # null score 6 for the unanswerable one
    outs[2][5, 0] = outs[2][6, 1] = 1.0          # a weak span (score 2)
    m = task.evaluate(outs, enc)
    assert m["em"] == 100.0 and m["f1"] == 100.0 and m["no_ans_f1"] == 100.0
    assert task.null_threshold == m["threshold"]
    assert task.predict(outs, enc)[2] == ""
    # without threshold tuning (answer everything) the unanswerable question is wrong
    ids = [e["id"] for e in enc.examples]
    decoded = task.decode(outs, enc)
    gold = task.gold(enc)
    t = best_threshold(ids, decoded, gold)
    assert decoded[2][1] > t > max(decoded[0][1], decoded[1][1])


def test_best_threshold_hand_case():
    gold = {"a": ["x"], "b": [], "c": ["z"]}
    decoded = [("x", -5.0), ("y", 1.0), ("w", 0.0)]      # answering c is wrong, answering b is wrong
    t = best_threshold(["a", "b", "c"], decoded, gold)
    assert -5.0 < t <= 0.0                                # answer only a


def test_real_squad_dev_gold_roundtrip(tokenizer):
    d = shared("squad_v1.1")
    task = get_task("squad")
    ex = task.load(str(d), "dev")
    assert len(ex) == 10570
    enc = task.encode(ex, tokenizer, 384)
    m = task.evaluate(gold_logits(enc), enc)
    assert m["em"] >= 99.0 and m["f1"] >= 99.0


def test_long_question_truncated(tmp_path, tokenizer, caplog):
    qs = [("q1", "Where " + "really " * 100 + "is it?", "Paris", False)]
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(qs)))
    task = get_task("squad")
    with caplog.at_level("WARNING"):
        enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 384)
    assert "truncated 1 of 1 questions to 64 tokens" in caplog.text
    assert "stride" not in caplog.text
    assert task.evaluate(gold_logits(enc), enc)["em"] == 100.0


def test_short_max_len_reduces_stride(tmp_path, tokenizer, caplog):
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(QS)))
    task = get_task("squad")
    with caplog.at_level("WARNING"):
        enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 128)
    assert "max_seq_len=128 leaves room for a stride of 31 (asked 128)" in caplog.text
    assert enc.meta["stride"] == 31
    assert task.evaluate(gold_logits(enc), enc)["em"] == 100.0


def test_errors(tmp_path):
    data = squad_json(QS[:1])
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"question q1: answer 'Paris' is not at character"):
        get_task("squad").load(str(tmp_path), "dev")
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json([("q9", "?", None, True)], version_2=True)))
    with pytest.raises(DataError, match="unanswerable; use task squad_v2"):
        get_task("squad").load(str(tmp_path), "dev")
    (tmp_path / "dev-v1.1.json").write_text('{"data": [')
    with pytest.raises(DataError, match=r"dev-v1.1.json:1: malformed JSON"):
        get_task("squad").load(str(tmp_path), "dev")
    (tmp_path / "dev-v1.1.json").write_text('{"version": 1}')
    with pytest.raises(DataError, match="top-level 'data' list"):
        get_task("squad").load(str(tmp_path), "dev")


def test_squad_v2_null_score_is_the_minimum_over_all_windows(tmp_path, tokenizer):
    """Every question spans several windows. Per question the "no answer" score is the lowest [CLS] score
    of ANY of its windows (as the official reference decoder does), not the first, last or answer window's;
    the best span may sit in yet another window."""
    qs = QS[:2] + [("q4", "Who painted the tower?", None, True)]
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(squad_json(qs, version_2=True)))
    task = get_task("squad_v2", null_threshold=0.0)
    enc = task.encode(task.load(str(tmp_path), "dev"), tokenizer, 64)
    windows = [[j for j, f in enumerate(enc.features) if f["example_index"] == i] for i in range(3)]
    assert all(len(w) >= 4 for w in windows), [len(w) for w in windows]
    outs = [np.zeros((len(f["input_ids"]), 2), dtype=np.float32) for f in enc.features]

    def set_null(j, score):
        outs[j][0] = [score / 2, score / 2]

    for i, ws in enumerate(windows):
        for j in ws:
            set_null(j, 7.0)
            f = enc.features[j]
            if f["start_positions"] > 0:                    # the answer's windows: span score 2 + 2
                outs[j][f["start_positions"], 0] = outs[j][f["end_positions"], 1] = 2.0
    q1, q2, q4 = windows
    assert enc.features[q1[0]]["start_positions"] > 0       # "Paris": first window; "1889": last windows
    assert enc.features[q2[-1]]["start_positions"] > 0 and enc.features[q2[0]]["start_positions"] == 0
    set_null(q1[0], 6.0)                                     # answer window: not the lowest null
    set_null(q1[len(q1) // 2], 1.0)                          # the lowest, in a middle window
    set_null(q2[0], 0.5)                                     # the lowest, far from the answer
    for j in q2:
        if enc.features[j]["start_positions"] > 0:
            set_null(j, 8.0)
    for j in q4:
        set_null(j, 5.0)
    set_null(q4[len(q4) // 2], 2.0)
    c0 = enc.features[q4[0]]["offset_mapping"].index(next(o for o in enc.features[q4[0]]["offset_mapping"]
                                                           if o[0] >= 0))
    outs[q4[0]][c0] = [1.5, 1.5]                             # a weak span (3.0) in q4's first window
    s, e = enc.features[q4[0]]["offset_mapping"][c0]
    weak = CONTEXT[s:e]

    decoded = task.decode(outs, enc)
    assert [t for t, _ in decoded] == ["Paris", "1889", weak]
    np.testing.assert_allclose([d for _, d in decoded], [1.0 - 4.0, 0.5 - 4.0, 2.0 - 3.0], rtol=0, atol=1e-6)
    assert task.predict(outs, enc) == ["Paris", "1889", weak]  # diff < 0 = threshold: every one answers
    m = task.evaluate(outs, enc)                               # tuned: answer q1, q2 (diff -3, -3.5), not q4 (-1)
    assert (m["em"], m["f1"], m["no_ans_f1"]) == (100.0, 100.0, 100.0)
    assert -3.0 < m["threshold"] < -1.0
