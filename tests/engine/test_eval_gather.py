"""Dev/test outputs computed by 2 real ranks (gloo on CPU) come back whole and in *feature* order on every rank.

Each rank runs ``split_outputs`` on its shard of a split with an odd number of features (so the shards
differ in size and the last batch of one rank is dummy work) and a forward whose outputs are a known,
distinct function of each feature's ids. Any order other than feature order - rank order, batch order,
the dummy item kept - scrambles every dev metric and submission file, and shows here as a wrong value.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megaprompt.engine.data import split_outputs
from megaprompt.tasks.base import EncodedSplit
from tests.engine.conftest import free_port

N = 7            # odd, and not a multiple of world x batch
WORLD, BATCH = 2, 2


def features(n: int) -> list[dict]:
    """Feature i: length 3 + i % 4 (padded batches of unequal rows), ids 100 * (i + 1) + position."""
    out = []
    for i in range(n):
        length = 3 + i % 4
        out.append({"input_ids": [100 * (i + 1) + t for t in range(length)], "attention_mask": [1] * length,
                    "labels": i % 2})
    return out


def expected(head: str, feature: dict) -> np.ndarray:
    ids = np.asarray(feature["input_ids"], dtype=np.float32)
    if head == "tag":                                     # per token, unpadded: (L, 2)
        return np.stack([ids, -ids], axis=-1)
    return np.array([ids[0], ids.sum()], dtype=np.float32)   # per feature: (2,)


def forward(head: str):
    def fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert "labels" not in batch                      # labels are withheld from the model
        ids = batch["input_ids"].float() * batch["attention_mask"]
        if head == "tag":
            return torch.stack([ids, -ids], dim=-1)       # (B, Lpad, 2)
        return torch.stack([ids[:, 0], ids.sum(-1)], dim=-1)
    return fn


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        split = EncodedSplit(features=features(N))
        for head in ("cls", "tag"):
            outs = split_outputs(forward(head), head, split, pad_id=0, batch_size=BATCH, rank=rank, world=WORLD,
                                 device=torch.device("cpu"))
            np.savez(Path(out_dir) / f"rank{rank}_{head}.npz", *outs)
    finally:
        dist.destroy_process_group()


def test_two_rank_eval_outputs_are_in_feature_order(tmp_path):
    # fork: the children reuse this process's imports (spawn would re-import torch, transformers, deepspeed)
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    feats = features(N)
    for head in ("cls", "tag"):
        for rank in range(WORLD):
            with np.load(tmp_path / f"rank{rank}_{head}.npz") as z:
                got = [z[f"arr_{i}"] for i in range(len(z.files))]
            assert len(got) == N, f"{head}, rank {rank}: {len(got)} outputs for {N} features"
            for i, (g, f) in enumerate(zip(got, feats)):
                np.testing.assert_array_equal(g, expected(head, f), err_msg=f"{head}, rank {rank}, feature {i}")
