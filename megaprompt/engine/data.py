"""Deterministic, resumable batching of encoded features across ranks.

Order: epoch e shuffles all features with ``numpy.random.default_rng(seed + e)``; optimizer step k of the
epoch consumes the global batch ``perm[k*G:(k+1)*G]`` with G = micro x accum x world; rank r, micro-step
a takes its micro-batch from that slice. So the data position is fully described by the global step:
resuming at step s replays nothing and skips nothing. G (and so the order) depends on the world size, so
the engine refuses to resume a checkpoint written by a different number of ranks. The last incomplete
global batch of an epoch is dropped, which keeps every rank doing the same number of collectives.

Batches come from a ``torch.utils.data.DataLoader`` over the split's Arrow table whose batch sampler
(``StepBatches``) replays ``TrainStream``'s order, so the loader changes how a batch is fetched, never which.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from megaprompt.engine.distributed import collective_device
from megaprompt.tasks.pipeline import EncodedSplit


def collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of feature dicts to the longest sequence in the batch; handles (C, L) multiple-choice features."""
    return EncodedSplit(list(features)).model_inputs(range(len(features)), pad_id)


class TrainStream:
    """Yields this rank's micro-batches for optimizer steps ``start_step, start_step+1, ...``."""

    def __init__(self, n: int, micro: int, accum: int, rank: int, world: int, seed: int) -> None:
        self.n, self.micro, self.accum, self.rank, self.world, self.seed = n, micro, accum, rank, world, seed
        self.global_batch = micro * accum * world
        self.steps_per_epoch = n // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} training examples cannot fill one global batch of {self.global_batch} "
                             f"(batch_size {micro} x grad_accum {accum} x world {world}); lower batch_size")

    def step_indices(self, step: int) -> list[list[int]]:
        """Indices of this rank's ``accum`` micro-batches for global optimizer step ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng(self.seed + epoch).permutation(self.n)
        base = k * self.global_batch
        out = []
        for a in range(self.accum):
            start = base + (a * self.world + self.rank) * self.micro
            out.append(perm[start:start + self.micro].tolist())
        return out

    def step_batches(self, step: int) -> list[tuple[int, list[int]]]:
        """``step_indices`` as ``(task 0, indices)`` pairs: the one-task case of ``mixing.MultiTaskStream``."""
        return [(0, idx) for idx in self.step_indices(step)]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler of this rank's micro-batches for steps ``start_step .. end_step - 1`` in the stream's order
    (``TrainStream`` or ``mixing.MultiTaskStream``: ``accum`` micro-batches per step, each of one task), a pure
    function of (seed, step, world size). A micro-batch is a list of ``(task index, feature index)``."""

    def __init__(self, stream: Any, start_step: int, end_step: int) -> None:
        self.stream, self.start_step, self.end_step = stream, start_step, end_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.end_step):
            for task, idx in self.stream.step_batches(step):
                yield [(task, i) for i in idx]

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.stream.accum


class _Batches(torch.utils.data.Dataset):
    """Map-style view of the tasks' splits whose ``__getitems__`` collates a whole micro-batch (one task) with
    one Arrow ``take`` and tags it with ``task_ids`` (B,)."""

    def __init__(self, splits: Sequence[EncodedSplit], pad_id: int) -> None:
        self.splits, self.pad_id = list(splits), pad_id

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits)

    def __getitems__(self, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        task = items[0][0]
        batch = self.splits[task].model_inputs([i for _, i in items], self.pad_id)
        batch["task_ids"] = torch.full((len(items),), task, dtype=torch.long)
        return batch


def train_loader(splits: EncodedSplit | Sequence[EncodedSplit], stream: Any, start_step: int, end_step: int,
                 pad_id: int, device: torch.device) -> torch.utils.data.DataLoader:
    """Micro-batches (padded tensors + ``task_ids``) of steps ``start_step..end_step-1`` for this rank. On GPU,
    two worker processes (the Arrow files are memory-mapped, so workers share the page cache) and pinned
    memory."""
    gpu = device.type == "cuda"
    splits = [splits] if isinstance(splits, EncodedSplit) else list(splits)
    # Its own generator: starting an iterator draws a base seed, and from the global RNG that draw would shift
    # every later dropout mask of a resumed run (restored RNG + one draw) against the uninterrupted one.
    return torch.utils.data.DataLoader(_Batches(splits, pad_id), batch_sampler=StepBatches(stream, start_step, end_step),
                                       collate_fn=_identity, num_workers=2 if gpu else 0, pin_memory=gpu,
                                       persistent_workers=False, generator=torch.Generator().manual_seed(0))


def _identity(batch: Any) -> Any:
    return batch


def eval_shards(n: int, batch: int, rank: int, world: int) -> Iterator[list[int]]:
    """This rank's eval batches: features rank, rank+world, ...; every rank yields the same number of
    batches (ZeRO-3 gathers parameters collectively, so a rank with nothing to do must still step)."""
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    n_batches = max(1, -(-per_rank // batch))
    for b in range(n_batches):
        idx = mine[b * batch:(b + 1) * batch]
        yield idx if idx else [min(rank, n - 1)]   # dummy (ignored) work keeps collectives aligned


def gather_outputs(local: dict[int, np.ndarray], n: int) -> list[np.ndarray]:
    """Outputs of every feature in feature order, on every rank, using tensor collectives only."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [local[i] for i in range(n)]
    ids = sorted(local)
    shapes = [list(local[i].shape) for i in ids]
    ndim = max((len(s) for s in shapes), default=1)
    # header per item: index, ndim, dims (padded to ndim), followed by the flat data of all items
    header = torch.tensor([[i, len(s)] + s + [0] * (ndim - len(s)) for i, s in zip(ids, shapes)], dtype=torch.long)
    header = header.reshape(len(ids), 2 + ndim)
    flat = torch.from_numpy(np.concatenate([local[i].astype(np.float32).ravel() for i in ids])) if ids \
        else torch.zeros(0)
    world = dist.get_world_size()
    dev = collective_device()
    sizes = torch.tensor([header.shape[0], flat.numel(), ndim], dtype=torch.long, device=dev)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    max_items = int(max(s[0] for s in all_sizes))
    max_flat = int(max(s[1] for s in all_sizes))
    max_ndim = int(max(s[2] for s in all_sizes))
    h = torch.full((max_items, 2 + max_ndim), -1, dtype=torch.long)
    h[:header.shape[0], :header.shape[1]] = header
    f = torch.zeros(max_flat)
    f[:flat.numel()] = flat
    h, f = h.to(dev), f.to(dev)
    hs = [torch.empty_like(h) for _ in range(world)]
    fs = [torch.empty_like(f) for _ in range(world)]
    dist.all_gather(hs, h)
    dist.all_gather(fs, f)
    result: dict[int, np.ndarray] = {}
    for hr, fr in zip((x.cpu() for x in hs), (x.cpu() for x in fs)):
        off = 0
        for row in hr.tolist():
            if row[0] < 0:
                continue
            shape = row[2:2 + row[1]]
            size = int(np.prod(shape)) if shape else 1
            result[row[0]] = fr[off:off + size].numpy().reshape(shape)
            off += size
    return [result[i] for i in range(n)]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def split_outputs(forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], head: str, split: Any, pad_id: int,
                  batch_size: int, rank: int, world: int, device: torch.device) -> list[np.ndarray]:
    """Per-feature logits of a whole split, in feature order, on every rank (no grad, labels withheld)."""
    local: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for idx in eval_shards(len(split), batch_size, rank, world):
            batch, lengths = split.model_inputs(idx, pad_id, lengths=True)
            for key in ("labels", "start_positions", "end_positions"):
                batch.pop(key, None)
            logits = forward(to_device(batch, device)).float().cpu().numpy()
            for j, i in enumerate(idx):
                # token-level heads: drop the batch padding so each output matches its feature's length
                local[i] = logits[j][:lengths[j]] if head in ("tag", "span") else logits[j]
    return gather_outputs(local, len(split))
