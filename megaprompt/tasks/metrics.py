"""Metrics, written here (no ``evaluate.load``) and checked in tests against independent references.

- Classification: accuracy, binary F1, macro F1 (scikit-learn semantics: labels = union of gold and
  predicted), Matthews correlation (GLUE CoLA), Pearson / Spearman (GLUE STS-B).
- Span F1 for NER / SRL: chunks extracted like conlleval / seqeval's default mode (IOB1, IOB2, IOE, BILOU
  prefixes), micro-averaged exact-span F1 (Tjong Kim Sang & De Meulder 2003; seqeval ``f1_score``).
- SQuAD EM / F1 with the official v1.1/v2.0 evaluation script's answer normalisation (lower case, strip
  punctuation, drop articles a/an/the, collapse white space), max over gold answers (Rajpurkar et al. 2016).
- SuperGLUE MultiRC (F1a over all answer options, EM per question) and ReCoRD (max-over-gold token EM/F1)
  following the SuperGLUE paper (Wang et al. 2019) and the ReCoRD official evaluation script.
All return fractions in [0, 1]; tasks multiply by 100.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Hashable, Iterable, Sequence

import numpy as np


# ----------------------------------------------------------------------------- classification / regression
def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    if len(y_true) != len(y_pred):
        raise ValueError(f"accuracy: {len(y_true)} gold vs {len(y_pred)} predictions")
    if not y_true:
        return 0.0
    return float(sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true))


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def f1_binary(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], positive: Hashable = 1) -> float:
    tp = sum(t == positive and p == positive for t, p in zip(y_true, y_pred))
    fp = sum(t != positive and p == positive for t, p in zip(y_true, y_pred))
    fn = sum(t == positive and p != positive for t, p in zip(y_true, y_pred))
    return _prf(tp, fp, fn)[2]


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    labels = sorted(set(y_true) | set(y_pred), key=repr)
    if not labels:
        return 0.0
    return float(np.mean([f1_binary(y_true, y_pred, positive=c) for c in labels]))


def mcc(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004, as scikit-learn)."""
    labels = sorted(set(y_true) | set(y_pred), key=repr)
    index = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for t, p in zip(y_true, y_pred):
        cm[index[t], index[p]] += 1
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_ytyp = correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n * n - np.dot(p_sum, p_sum)
    cov_ytyt = n * n - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks for ties (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(_rank(np.asarray(x, dtype=np.float64)), _rank(np.asarray(y, dtype=np.float64)))


# ----------------------------------------------------------------------------- span F1 (NER / SRL)
def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", ""):
        return "O", ""
    if len(tag) > 1 and tag[1] in "-_" and tag[0] in "BIESLU":
        prefix, typ = tag[0], tag[2:]
        return {"L": "E", "U": "S"}.get(prefix, prefix), typ or "_"
    return tag[0], (tag[1:].split("-", 1)[-1] or "_")


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end inclusive) chunks of one tag sequence, conlleval-style (works for IOB1/IOB2/BILOU)."""
    spans: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, raw in enumerate(list(tags) + ["O"]):
        tag, type_ = _split_tag(raw)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            spans.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


def span_prf(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]],
             ignore_types: tuple[str, ...] = ()) -> dict[str, float]:
    """Micro precision / recall / F1 over exact (type, start, end) spans, summed over sentences."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"span_prf: gold has {len(g)} tags but prediction has {len(p)}")
        gs = {s for s in get_spans(g) if s[0] not in ignore_types}
        ps = {s for s in get_spans(p) if s[0] not in ignore_types}
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    p_, r_, f_ = _prf(tp, n_pred - tp, n_gold - tp)
    return {"precision": p_, "recall": r_, "f1": f_}


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """CoNLL-2003 IOB1 (I- starts a chunk unless it continues one of the same type) to IOB2 (B- starts every chunk)."""
    out: list[str] = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def bilou_to_bio(tags: Sequence[str]) -> list[str]:
    """BILOU / BIOES to BIO: U-/S- become B-, L-/E- become I-."""
    return [("B-" + t[2:]) if t[:2] in ("U-", "S-") else ("I-" + t[2:]) if t[:2] in ("L-", "E-") else t
            for t in tags]


# ----------------------------------------------------------------------------- SQuAD
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra white space (official SQuAD evaluation)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def squad_em(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_toks or not gold_toks:  # v2.0: no-answer is correct only if both are empty
        return float(pred_toks == gold_toks)
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_toks), same / len(gold_toks)
    return 2 * p * r / (p + r)


def max_over_gold(fn, prediction: str, golds: Sequence[str]) -> float:
    """Score against the best gold answer; an empty gold list means "no answer" (SQuAD v2.0)."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(fn(prediction, g) for g in golds)


def squad_scores(predictions: dict[str, str], golds: dict[str, Sequence[str]]) -> dict[str, float]:
    """Mean EM / F1 over every question in ``golds`` (a missing prediction counts as wrong)."""
    if not golds:
        return {"em": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid)
        if pred is None:
            continue
        em += max_over_gold(squad_em, pred, answers)
        f1 += max_over_gold(squad_f1, pred, answers)
    return {"em": em / len(golds), "f1": f1 / len(golds)}


# ----------------------------------------------------------------------------- SuperGLUE MultiRC / ReCoRD
def multirc_scores(question_ids: Sequence[Hashable], y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """F1a: binary F1 over all answer options; EM: fraction of questions with every option right."""
    f1a = f1_binary(y_true, y_pred, positive=1)
    per_q: dict[Hashable, bool] = {}
    for q, t, p in zip(question_ids, y_true, y_pred):
        per_q[q] = per_q.get(q, True) and (t == p)
    em = sum(per_q.values()) / len(per_q) if per_q else 0.0
    return {"f1a": f1a, "em": em}


def record_scores(predictions: dict[Hashable, str], golds: dict[Hashable, Sequence[str]]) -> dict[str, float]:
    """ReCoRD: per query, max over gold entity strings of SQuAD-normalised EM / token F1; mean over queries."""
    if not golds:
        return {"em": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid)
        if pred is None or not answers:
            continue
        em += max(squad_em(pred, g) for g in answers)
        f1 += max(squad_f1(pred, g) for g in answers)
    return {"em": em / len(golds), "f1": f1 / len(golds)}
