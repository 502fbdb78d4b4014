"""``demo``: a small built-in review-sentiment task, so ``--task demo`` works without ``--data_dir``.

Written for this project (not derived from any data set): short English movie / product / restaurant
review sentences built by a seeded generator from hand-written templates and word lists. Labels are
``negative`` / ``positive``. To stop a model from solving it by word lookup alone, about half the templates
flip or override the polarity of the sentiment word they contain: negation ("was not great", "anything
but dull", "nothing about it was ..."), contrast where the clause after "but" / the main clause after
"although" decides, and expectation reversals ("I expected ... to be great, but it turned out dull").

Splits (disjoint sentences, balanced labels): train 1600, dev 240, test 240 (test is labelled too).
"""
from __future__ import annotations

import random
from typing import Any, Callable

from megaprompt.tasks.base import canonical_split
from megaprompt.tasks.sentence import SentenceTask

SEED = 20240611
SIZES = {"train": 1600, "dev": 240, "test": 240}

POS_ADJ = ["great", "excellent", "wonderful", "fantastic", "delightful", "superb", "brilliant", "enjoyable",
           "charming", "impressive", "solid", "lovely", "reliable", "comfortable", "gripping", "moving",
           "hilarious", "clever", "beautiful", "fun", "pleasant", "remarkable", "satisfying", "good"]
NEG_ADJ = ["terrible", "awful", "boring", "dull", "disappointing", "poor", "weak", "clumsy", "flimsy",
           "tedious", "mediocre", "annoying", "broken", "cheap", "bland", "confusing", "painful", "sloppy",
           "forgettable", "ugly", "unpleasant", "frustrating", "useless", "bad"]
POS_VERB = ["loved", "enjoyed", "adored", "liked", "appreciated"]
NEG_VERB = ["hated", "disliked", "regretted", "resented", "despised"]
INTENS = ["really", "truly", "very", "quite", "incredibly", "genuinely", "absolutely", "rather", "so"]

DOMAINS: dict[str, tuple[list[str], list[str]]] = {
    "movie": (["this movie", "the film", "this sequel", "the documentary", "this comedy", "the show"],
              ["plot", "acting", "soundtrack", "dialogue", "ending", "pacing", "cast", "script", "camera work",
               "villain", "humor", "story"]),
    "product": (["this phone", "these headphones", "the laptop", "this blender", "the vacuum", "this jacket",
                 "the backpack", "this kettle"],
                ["battery", "screen", "price", "design", "sound", "keyboard", "packaging", "support", "build",
                 "charger", "fabric", "handle", "manual", "delivery"]),
    "restaurant": (["the restaurant", "this cafe", "the diner", "this bakery", "the bistro"],
                   ["food", "service", "staff", "dessert", "atmosphere", "menu", "portions", "coffee",
                    "music", "bread", "wine list"]),
}


def _adj(rng: random.Random, positive: bool) -> str:
    return rng.choice(POS_ADJ if positive else NEG_ADJ)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


PLURAL = {"portions", "these headphones"}


def _was(noun: str) -> str:
    return "were" if noun in PLURAL else "was"


def _is(noun: str) -> str:
    return "are" if noun in PLURAL else "is"


# Each template: (rng, subject, aspect, other aspect, target label as bool) -> sentence with that sentiment.
Template = Callable[[random.Random, str, str, str, bool], str]


def t_plain(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return f"The {a} {_was(a)} {_adj(r, y)}."


def t_intens(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return _cap(f"{s} {_is(s)} {r.choice(INTENS)} {_adj(r, y)}.")


def t_negated(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    neg = r.choice(["not", "never", "far from", "hardly"])
    return f"The {a} {_was(a)} {neg} {_adj(r, not y)}."


def t_anything_but(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return _cap(f"{r.choice(['honestly, ', 'to be fair, ', ''])}{s} {_is(s)} anything but {_adj(r, not y)}.")


def t_nothing_about(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    if r.random() < 0.5:
        return f"Nothing about {s} was {_adj(r, not y)}."
    return f"Everything about {s} was {_adj(r, y)}."


def t_but(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return f"The {a} {_was(a)} {_adj(r, not y)}, but the {b} {_was(b)} {r.choice(INTENS)} {_adj(r, y)}."


def t_but_overall(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return f"The {a} {_was(a)} {_adj(r, not y)}, but overall {s} {_was(s)} {_adj(r, y)}."


def t_although(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return f"Although the {a} {_was(a)} {_adj(r, not y)}, {s} felt {_adj(r, y)} in the end."


def t_expected(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    if r.random() < 0.5:
        return f"I expected {s} to be {_adj(r, not y)}, but {'they' if s in PLURAL else 'it'} turned out {_adj(r, y)}."
    return f"I expected {s} to be {_adj(r, y)}, and {'they' if s in PLURAL else 'it'} really {_was(s)}."


def t_recommend(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    if r.random() < 0.5:
        return f"I {'would' if y else 'would not'} recommend {s} to a friend."
    return f"I {'would happily' if y else 'would never'} {r.choice(['buy', 'watch', 'try'])} {s} again."


def t_verb(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    if r.random() < 0.5:
        return f"I {r.choice(POS_VERB if y else NEG_VERB)} {s}."
    verb = r.choice(["hate", "dislike", "regret"] if y else ["like", "enjoy", "love"])
    return f"I did not {verb} {s} at all."


def t_could_have(r: random.Random, s: str, a: str, b: str, y: bool) -> str:
    return f"The {a} could have been {_adj(r, not y)}, but {'they' if a in PLURAL else 'it'} {_was(a)} not."


TEMPLATES: list[Template] = [t_plain, t_intens, t_negated, t_anything_but, t_nothing_about, t_but,
                             t_but_overall, t_although, t_expected, t_recommend, t_verb, t_could_have]


def generate(seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """All splits, deterministic for a seed; sentences are unique across splits; labels alternate then shuffle."""
    sizes = dict(SIZES if sizes is None else sizes)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("dev", "test", "train"):   # held-out splits first so they never depend on train's size
        rows: list[dict[str, Any]] = []
        n = sizes[split]
        for i in range(n):
            y = i % 2 == 1
            for _ in range(1000):
                subjects, aspects = DOMAINS[rng.choice(sorted(DOMAINS))]
                a, b = rng.sample(aspects, 2)
                text = rng.choice(TEMPLATES)(rng, rng.choice(subjects), a, b, y)
                if text not in seen:
                    break
            else:  # pragma: no cover - the template space is far larger than the splits
                raise RuntimeError("demo generator ran out of unique sentences")
            seen.add(text)
            rows.append({"text": text, "text_pair": None, "label": "positive" if y else "negative"})
        rng.shuffle(rows)
        for i, row in enumerate(rows):
            row["idx"] = i
        out[split] = rows
    return {s: out[s] for s in ("train", "dev", "test")}


class DemoTask(SentenceTask):
    name = "demo"
    label_names = ["negative", "positive"]
    metrics = ("accuracy", "macro_f1")
    splits = {"train": "<built-in>", "dev": "<built-in>", "test": "<built-in>"}
    source = "written for megaprompt: seeded template generator (megaprompt/tasks/demo.py)"
    file_format = "built in; no --data_dir"

    def __init__(self, seed: int = SEED) -> None:
        self.seed = seed
        self._data: dict[str, list[dict[str, Any]]] | None = None

    def load(self, data_dir: str | None, split: str) -> list[dict[str, Any]]:
        split = canonical_split(split, self.splits, self.name)
        if self._data is None:
            self._data = generate(self.seed)
        return [dict(e) for e in self._data[split]]

    def source_files(self, data_dir: str | None, split: str) -> list:
        return []   # generated: the seed (cache_options) and the code version key the cache

    def cache_options(self) -> dict[str, Any]:
        return {"seed": self.seed}
