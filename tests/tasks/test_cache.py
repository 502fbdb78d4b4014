"""The on-disk feature cache: hits skip encoding, any input change misses, no pickle, can be disabled."""
from __future__ import annotations

import json
import zipfile

import pytest

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.encoding import cache_key


@pytest.fixture
def counting(monkeypatch):
    calls = []

    def wrap(task):
        orig = task.encode

        def encode(*a, **k):
            calls.append(1)
            return orig(*a, **k)
        monkeypatch.setattr(task, "encode", encode)
        return task
    return calls, wrap


def _copa(d, n=4):
    rows = [{"premise": f"P{i}.", "choice1": "a", "choice2": "b", "question": "cause", "idx": i, "label": i % 2}
            for i in range(n)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hit_miss_and_equality(tmp_path, tokenizer, counting):
    calls, wrap = counting
    _copa(tmp_path)
    cache = tmp_path / "c"
    task = wrap(get_task("copa"))
    a = load_split(task, str(tmp_path), "train", tokenizer, 32, cache=str(cache))
    b = load_split(task, str(tmp_path), "train", tokenizer, 32, cache=str(cache))
    assert len(calls) == 1 and a.features == b.features and b.meta == a.meta
    assert list(b.features[0]) == list(a.features[0])             # key order kept
    load_split(task, str(tmp_path), "train", tokenizer, 16, cache=str(cache))     # max_seq_len changed
    assert len(calls) == 2
    _copa(tmp_path, n=5)                                                           # data changed
    load_split(task, str(tmp_path), "train", tokenizer, 32, cache=str(cache))
    assert len(calls) == 3
    files = list(cache.glob("*.npz"))
    assert len(files) == 3 and all(f.name.startswith("copa-train-") for f in files)
    for f in files:   # plain arrays only: loads with allow_pickle=False and holds no object arrays
        with zipfile.ZipFile(f) as z:
            assert all(n.endswith(".npy") for n in z.namelist())


def test_every_feature_layout_round_trips(tmp_path, tokenizer):
    from .test_qa import QS, squad_json
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(QS)))
    task = get_task("squad")
    a = load_split(task, str(tmp_path), "dev", tokenizer, 64, cache=str(tmp_path / "c"))
    b = load_split(task, str(tmp_path), "dev", tokenizer, 64, cache=str(tmp_path / "c"))
    assert [list(map(list, f["offset_mapping"])) for f in a.features] == [f["offset_mapping"] for f in b.features]
    assert [f["input_ids"] for f in a.features] == [f["input_ids"] for f in b.features]
    assert b.meta == a.meta and [f["example_index"] for f in a.features] == [f["example_index"] for f in b.features]


def test_disabled_and_key_depends_on_tokenizer(tmp_path, tokenizer, counting, monkeypatch):
    calls, wrap = counting
    _copa(tmp_path)
    monkeypatch.setenv("MEGAPROMPT_CACHE", "off")
    task = wrap(get_task("copa"))
    load_split(task, str(tmp_path), "train", tokenizer, 32)
    load_split(task, str(tmp_path), "train", tokenizer, 32)
    assert len(calls) == 2
    ex = task.load(str(tmp_path), "train")
    k1 = cache_key(task, "train", ex, tokenizer, 32)
    tokenizer("warm up", "the backend", truncation=True, max_length=5)   # backend state changes...
    assert cache_key(task, "train", ex, tokenizer, 32) == k1             # ...but the key does not
    from pathlib import Path

    from transformers import AutoTokenizer
    cased = AutoTokenizer.from_pretrained(Path(tokenizer.name_or_path), do_lower_case=False)
    assert cache_key(task, "train", ex, cased, 32) != k1                 # a different tokenizer misses


def test_cache_files_follow_the_umask(tmp_path, tokenizer):
    """A shared cluster's colleagues read the cache: its files get 0666 minus the umask, not mkstemp's 0600."""
    import os
    import stat
    _copa(tmp_path)
    old = os.umask(0o022)
    try:
        load_split(get_task("copa"), str(tmp_path), "train", tokenizer, 32, cache=str(tmp_path / "c"))
    finally:
        os.umask(old)
    (f,) = (tmp_path / "c").glob("*.npz")
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
