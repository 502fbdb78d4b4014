"""Metrics: scikit-learn, SciPy and seqeval where the field maintains them; the official scripts' logic where not.

- Classification (``sklearn.metrics``): ``accuracy_score``, ``f1_score`` (binary with positive label 1;
  macro over the union of gold and predicted labels), ``matthews_corrcoef`` (GLUE CoLA).
- Regression (``scipy.stats``): ``pearsonr`` / ``spearmanr`` (GLUE STS-B; ties get average ranks).
  Degenerate inputs (a constant column, fewer than two items) score 0, not NaN, so model selection works.
- Span F1 for NER / SRL (``seqeval.metrics``, micro-averaged exact-span P/R/F1; Tjong Kim Sang & De Meulder
  2003). We use seqeval's *default* mode, which reproduces ``conlleval``: an ``I-X`` that follows ``O`` or
  another type opens a new chunk, so IOB1 input and the ill-formed sequences a model predicts are chunked the
  way the CoNLL shared tasks scored them. ``mode="strict", scheme=IOB2`` would instead drop every chunk that
  does not start with ``B-``, which scores a prediction ``O I-PER I-PER`` as no entity at all; the published
  P-Tuning v2 NER / SRL numbers (and Hugging Face's token-classification examples) use the default mode.
  BILOU tags are mapped to seqeval's IOBES (L- -> E-, U- -> S-). Span types in ``ignore_types`` (the SRL
  predicate ``V``, left out by ``srl-eval.pl``) become ``O`` before scoring, which changes no other chunk:
  conlleval already ends a chunk at every type change.
- SQuAD EM / F1 with the official v1.1/v2.0 evaluation script's answer normalisation (lower case, strip
  punctuation, drop articles a/an/the, collapse white space), max over gold answers (Rajpurkar et al. 2016).
- SuperGLUE MultiRC (F1a over all answer options, EM per question) and ReCoRD (max-over-gold token EM/F1)
  following the SuperGLUE paper (Wang et al. 2019) and the ReCoRD official evaluation script.
All return fractions in [0, 1]; tasks multiply by 100.
"""
from __future__ import annotations

import collections
import math
import re
import string
import warnings
from typing import Hashable, Iterable, Sequence

import numpy as np
from scipy import stats
from seqeval import metrics as seqeval
from sklearn import metrics as skm


# ----------------------------------------------------------------------------- classification / regression
def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    if len(y_true) != len(y_pred):
        raise ValueError(f"accuracy: {len(y_true)} gold vs {len(y_pred)} predictions")
    return float(skm.accuracy_score(list(y_true), list(y_pred))) if len(y_true) else 0.0


def f1_binary(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], positive: Hashable = 1) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skm.f1_score(list(y_true), list(y_pred), labels=[positive], average="micro", zero_division=0))


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    if not len(y_true):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skm.f1_score(list(y_true), list(y_pred), average="macro", zero_division=0))


def mcc(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004); 0 when undefined."""
    if not len(y_true):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skm.matthews_corrcoef(list(y_true), list(y_pred)))


def _correlation(fn, x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = float(fn(a, b)[0])
    return r if math.isfinite(r) else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    return _correlation(stats.pearsonr, x, y)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return _correlation(stats.spearmanr, x, y)


# ----------------------------------------------------------------------------- span F1 (NER / SRL)
def _for_seqeval(tags: Sequence[str], ignore_types: tuple[str, ...]) -> list[str]:
    out = []
    for t in tags:
        t = {"L": "E", "U": "S"}.get(t[:1], t[:1]) + t[1:] if len(t) > 2 and t[1] in "-_" else t
        if ignore_types and len(t) > 2 and t[1] in "-_" and t[2:] in ignore_types:
            t = "O"
        out.append(t)
    return out


def get_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end inclusive) chunks of one tag sequence, as seqeval's default (conlleval) mode finds them."""
    return [(t, s, e) for t, s, e in seqeval.sequence_labeling.get_entities(_for_seqeval(tags, ()))]


def span_prf(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]],
             ignore_types: tuple[str, ...] = ()) -> dict[str, float]:
    """Micro precision / recall / F1 over exact (type, start, end) spans, summed over sentences."""
    g_all, p_all = [], []
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"span_prf: gold has {len(g)} tags but prediction has {len(p)}")
        g_all.append(_for_seqeval(g, ignore_types))
        p_all.append(_for_seqeval(p, ignore_types))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(zero_division=0)
        return {"precision": float(seqeval.precision_score(g_all, p_all, **kw)),
                "recall": float(seqeval.recall_score(g_all, p_all, **kw)),
                "f1": float(seqeval.f1_score(g_all, p_all, **kw))}


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
