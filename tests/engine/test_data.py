"""Deterministic, resumable data order across ranks; padding; eval sharding keeps ranks in lockstep."""
from __future__ import annotations

import numpy as np
import pytest

from megaprompt.engine.data import TrainStream, collate, eval_shards, gather_outputs, train_loader
from megaprompt.tasks.pipeline import EncodedSplit


def test_ranks_partition_each_global_batch_and_order_depends_only_on_step():
    world, micro, accum = 2, 4, 3
    streams = [TrainStream(100, micro, accum, r, world, seed=5) for r in range(world)]
    assert streams[0].steps_per_epoch == 100 // 24
    for step in range(10):
        got = [i for s in streams for mb in s.step_indices(step) for i in mb]
        assert len(got) == 24 and len(set(got)) == 24             # disjoint micro-batches fill the global batch
    # an epoch visits distinct examples; the next epoch reshuffles
    epoch0 = [i for k in range(4) for s in streams for mb in s.step_indices(k) for i in mb]
    epoch1 = [i for k in range(4, 8) for s in streams for mb in s.step_indices(k) for i in mb]
    assert len(set(epoch0)) == 96 and epoch0 != epoch1
    # a fresh stream (a resumed job) reproduces any step exactly
    again = TrainStream(100, micro, accum, 1, world, seed=5)
    assert again.step_indices(7) == streams[1].step_indices(7)
    assert TrainStream(100, micro, accum, 1, world, seed=6).step_indices(7) != streams[1].step_indices(7)


def test_too_few_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill one global batch of 32"):
        TrainStream(20, 8, 2, 0, 2, 0)


def test_eval_shards_cover_everything_once_with_equal_batch_counts():
    n, world, bs = 11, 2, 4
    per_rank = [list(eval_shards(n, bs, r, world)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    seen = [i for r in range(world) for b in per_rank[r] for i in b]
    assert sorted(set(seen)) == list(range(n))


def test_collate_pads_sequences_labels_and_choices():
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [0, -100, 2]},
             {"input_ids": [5], "attention_mask": [1], "labels": [1]}]
    b = collate(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[0, -100, 2], [1, -100, -100]]
    mc = [{"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]], "labels": 1, "example_id": 9}]
    b = collate(mc, pad_id=0)
    assert b["input_ids"].shape == (1, 2, 2) and b["labels"].tolist() == [1] and "example_id" not in b
    reg = collate([{"input_ids": [1], "attention_mask": [1], "labels": 0.5}], 0)
    assert reg["labels"].dtype.is_floating_point


def test_gather_outputs_single_process_keeps_order():
    local = {i: np.full((i + 1,), i, dtype=np.float32) for i in range(3)}
    out = gather_outputs(local, 3)
    assert [o.tolist() for o in out] == [[0.0], [1.0, 1.0], [2.0, 2.0, 2.0]]


def _arrow_split(n: int) -> EncodedSplit:
    """An Arrow split whose feature i is [i, i+1, ..., i + i % 3] with label i."""
    import datasets
    rows = [{"input_ids": list(range(i, i + 1 + i % 3)), "attention_mask": [1] * (1 + i % 3), "labels": i}
            for i in range(n)]
    return EncodedSplit(datasets.Dataset.from_list(rows))


def test_loader_serves_the_stream_order_and_resumes_exactly():
    """The DataLoader over Arrow yields, micro-batch by micro-batch, exactly TrainStream's indices (checked through
    the labels, which equal the feature index), padded; started at step s it yields what the full run yields from s."""
    import torch
    split = _arrow_split(50)
    micro, accum, world = 3, 2, 2
    for rank in range(world):
        stream = TrainStream(len(split), micro, accum, rank, world, seed=3)
        full = list(train_loader(split, stream, 0, 12, pad_id=0, device=torch.device("cpu")))
        assert len(full) == 12 * accum          # 12 steps, crossing the epoch boundary (8 steps per epoch)
        want = [i for step in range(12) for mb in stream.step_indices(step) for i in mb]
        assert [i for b in full for i in b["labels"].tolist()] == want
        b = full[0]
        assert b["input_ids"].shape == (micro, max(1 + i % 3 for i in b["labels"].tolist()))
        assert all(b["input_ids"][j, 0].item() == i for j, i in enumerate(b["labels"].tolist()))
        resumed = list(train_loader(split, TrainStream(len(split), micro, accum, rank, world, seed=3), 7, 12, 0,
                                    torch.device("cpu")))
        assert all(torch.equal(x[k], y[k]) for x, y in zip(resumed, full[7 * accum:]) for k in x)
        assert len(resumed) == 5 * accum
