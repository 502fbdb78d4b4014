"""The Arrow feature cache: a hit parses no raw file and runs no tokenizer, any input change misses (file bytes,
max_seq_len, limit, transform, tokenizer), splits are memory-mapped from it, no pickle, umask modes, off switch."""
from __future__ import annotations

import json
import os
import stat
from functools import partial

import pytest

from megaprompt.tasks import get_task, load_split
from megaprompt.tasks.cache import cache_key


@pytest.fixture
def builds(monkeypatch):
    """Counts how often a task parses its raw file (each cache miss parses it once)."""
    calls = []

    def wrap(task):
        orig = task.read

        def read(*a, **k):
            calls.append(1)
            return orig(*a, **k)
        monkeypatch.setattr(task, "read", read)
        return task
    return calls, wrap


def _copa(d, n=4, premise="P"):
    rows = [{"premise": f"{premise}{i}.", "choice1": "a", "choice2": "b", "question": "cause", "idx": i,
             "label": i % 2} for i in range(n)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hit_reads_no_raw_file_and_runs_no_tokenizer(tmp_path, tokenizer, builds, monkeypatch):
    calls, wrap = builds
    _copa(tmp_path)
    cache = str(tmp_path / "c")
    task = wrap(get_task("copa"))
    a = load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=cache)
    with monkeypatch.context() as m:   # a hit must not tokenize: any call of the tokenizer fails the test
        m.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenizer called on a cache hit"))
        b = load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=cache)
    assert len(calls) == 1
    assert list(a.rows()) == list(b.rows()) and list(a.examples) == list(b.examples) and a.meta == b.meta
    assert b.meta["num_choices"] == 2 and len(b.features[0]["input_ids"]) == 2        # (C, L) layout kept
    # memory-mapped from the cache folder, not an in-memory copy; no pickle anywhere in it
    (folder,) = (tmp_path / "c").iterdir()
    assert b.features.cache_files and all(f["filename"].startswith(str(folder)) for f in b.features.cache_files)
    assert b.examples.table.cache_files
    names = {p.suffix for p in folder.rglob("*") if p.is_file()}
    assert names <= {".arrow", ".json"}, names


def test_every_input_change_misses(tmp_path, tokenizer, builds):
    calls, wrap = builds
    _copa(tmp_path)
    cache = str(tmp_path / "c")
    task = wrap(get_task("copa"))
    load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=cache)
    load_split(task, str(tmp_path), "train", tokenizer, 16, cache_dir=cache)                  # max_seq_len
    load_split(task, str(tmp_path), "train", tokenizer, 32, limit=2, cache_dir=cache)         # limit
    assert len(calls) == 3
    # same size and modification time, other bytes: a size+mtime key would wrongly hit
    f = tmp_path / "train.jsonl"
    st = f.stat()
    _copa(tmp_path, premise="Q")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size
    c = load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=cache)
    assert len(calls) == 4 and c.examples[0]["premise"] == "Q0."


def test_transform_is_applied_before_caching_and_keys_it(tmp_path, tokenizer):
    from megaprompt.heads.verbalizer import add_mask_token
    (tmp_path / "train.jsonl").write_text(json.dumps({"premise": "it rains", "hypothesis": "wet", "label":
                                                      "entailment"}) + "\n")
    task, cache = get_task("rte"), str(tmp_path / "c")
    plain = load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=cache)
    masked = load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=cache,
                        transform=partial(add_mask_token, tokenizer=tokenizer, max_seq_len=32))
    ids = masked.features[0]["input_ids"]
    assert ids[-2] == tokenizer.mask_token_id and ids[:-2] + ids[-1:] == plain.features[0]["input_ids"]
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_every_feature_layout_round_trips(tmp_path, tokenizer):
    from .test_qa import QS, squad_json
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(QS)))
    task = get_task("squad")
    a = load_split(task, str(tmp_path), "dev", tokenizer, 64, cache_dir=None)                  # no cache
    b = load_split(task, str(tmp_path), "dev", tokenizer, 64, cache_dir=str(tmp_path / "c"))
    b = load_split(task, str(tmp_path), "dev", tokenizer, 64, cache_dir=str(tmp_path / "c"))  # from the cache
    assert list(a.rows()) == list(b.rows()) and b.meta == a.meta
    assert all(isinstance(o, list) and len(o) == 2 for f in b.rows(["offset_mapping"]) for o in f["offset_mapping"])


def test_disabled_and_key_depends_on_tokenizer(tmp_path, tokenizer, builds, monkeypatch):
    calls, wrap = builds
    _copa(tmp_path)
    monkeypatch.setenv("MEGAPROMPT_CACHE", "off")
    task = wrap(get_task("copa"))
    load_split(task, str(tmp_path), "train", tokenizer, 32)
    load_split(task, str(tmp_path), "train", tokenizer, 32)
    assert len(calls) == 2
    files = task.source_files(str(tmp_path), "train")
    k1 = cache_key(task, "train", files, tokenizer, 32)
    tokenizer("warm up", "the backend", truncation=True, max_length=5)   # backend state changes...
    assert cache_key(task, "train", files, tokenizer, 32) == k1             # ...but the key does not
    from pathlib import Path

    from transformers import AutoTokenizer
    cased = AutoTokenizer.from_pretrained(Path(tokenizer.name_or_path), do_lower_case=False)
    assert cache_key(task, "train", files, cased, 32) != k1                 # a different tokenizer misses


def test_cache_files_follow_the_umask(tmp_path, tokenizer):
    """A shared cluster's colleagues read the cache: 0666/0777 minus the umask, not mkdtemp's 0700."""
    _copa(tmp_path)
    old = os.umask(0o022)
    try:
        load_split(get_task("copa"), str(tmp_path), "train", tokenizer, 32, cache_dir=str(tmp_path / "c"))
    finally:
        os.umask(old)
    entries = list((tmp_path / "c").rglob("*"))
    assert entries and all(stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644) for p in entries)


def test_tokenizing_bar_on_rank0_only(tmp_path, tokenizer, monkeypatch, capfd):
    """Rank 0 shows datasets' tokenizing bar for a large split; the other ranks show none (issue 15)."""
    import datasets

    from megaprompt.tasks import pipeline
    _copa(tmp_path)
    monkeypatch.setattr(pipeline, "BAR_FROM", 0)          # a 4-example split counts as large here
    task = get_task("copa")
    try:
        for rank, bar in (("1", False), ("0", True)):
            monkeypatch.setenv("RANK", rank)
            datasets.enable_progress_bars()
            capfd.readouterr()
            load_split(task, str(tmp_path), "train", tokenizer, 32, cache_dir=None)
            assert ("tokenizing copa/train" in capfd.readouterr().err) == bar, rank
    finally:
        datasets.enable_progress_bars()


def test_batched_map_equals_one_encode_of_the_whole_split(tmp_path, tokenizer):
    """load_split tokenizes in batches of 1,000 examples; the features (example_index included) equal one encode
    call over the whole list. 1,600 demo examples and 1,200 tagging sentences span two batches each."""
    demo = get_task("demo")
    enc = load_split(demo, None, "train", tokenizer, 32, cache_dir=str(tmp_path / "c"))
    whole = demo.encode(demo.load(None, "train"), tokenizer, 32).features
    assert len(enc) == 1600 and list(enc.rows()) == whole
    lines = [f"w{i} B-X\nx{i % 7} I-X\ny O\n" for i in range(1200)]
    (tmp_path / "train.txt").write_text("\n".join(lines))
    tag = get_task("generic_tag", data_dir=str(tmp_path))
    enc = load_split(tag, str(tmp_path), "train", tokenizer, 16, cache_dir=str(tmp_path / "c"))
    whole = tag.encode(tag.load(str(tmp_path), "train"), tokenizer, 16).features
    assert len(enc) == 1200 and list(enc.rows()) == whole and enc.features[1100]["example_index"] == 1100
