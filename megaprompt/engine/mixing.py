"""Multi-task mixing: which task every micro-step trains, and the batches of each task.

P-Tuning v2's multi-task setting (Liu et al., ACL 2022, Sec. 4.3 / Table 3 MPT-2) trains one shared prompt on
the union of the tasks' training sets with a linear head per task; the maintainers' advice for it is that
"all samples from one batch come from the same dataset". So a micro-step is one task:

* ``TaskSchedule.task_at(step, micro)`` is a pure function of (seed, step, micro) - the same on every rank
  (under ZeRO-3 ranks running different heads would gather different parameters, and hang), and the same
  after a resume, so a resumed run is exact;
* proportional: task t with probability n_t / sum n; temperature: n_t^(1/T) normalised (T=1 is
  proportional); round_robin: tasks in turn, micro-step by micro-step;
* each task keeps its own ``TrainStream``-style order (``engine.data``'s (seed, step, world) contract): its
  k-th use takes the k-th global batch of its own epoch-shuffled order, where k counts that task's earlier
  micro-steps (a pure function of the schedule, so of (seed, step) too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIXINGS = ("proportional", "temperature", "round_robin")


@dataclass(frozen=True)
class TaskSchedule:
    sizes: tuple[int, ...]      # training features per task
    accum: int                  # micro-steps per optimizer step
    seed: int
    mixing: str = "proportional"
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing {self.mixing!r}: expected one of {', '.join(MIXINGS)}")
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"task sizes {self.sizes}: every task needs training features")

    @property
    def probabilities(self) -> np.ndarray:
        n = np.asarray(self.sizes, dtype=np.float64)
        if self.mixing == "round_robin":
            return np.full(len(n), 1.0 / len(n))
        w = n if self.mixing == "proportional" else n ** (1.0 / self.temperature)
        return w / w.sum()

    def task_at(self, step: int, micro: int) -> int:
        """The task of micro-step ``micro`` (0..accum-1) of optimizer step ``step``: same on every rank."""
        k = step * self.accum + micro
        if len(self.sizes) == 1:
            return 0
        if self.mixing == "round_robin":
            return k % len(self.sizes)
        # one independent draw per micro-step, keyed by (seed, k): no state to carry across a resume
        u = np.random.default_rng([self.seed, k]).random()
        return int(min(np.searchsorted(np.cumsum(self.probabilities), u, side="right"), len(self.sizes) - 1))

    def uses_before(self, step: int) -> list[int]:
        """Micro-steps each task ran before optimizer step ``step`` (its position in its own order)."""
        counts = [0] * len(self.sizes)
        if self.mixing == "round_robin" or len(self.sizes) == 1:
            k, t = step * self.accum, len(self.sizes)
            return [k // t + (1 if i < k % t else 0) for i in range(t)]
        for s in range(step):
            for a in range(self.accum):
                counts[self.task_at(s, a)] += 1
        return counts


class MultiTaskStream:
    """This rank's micro-batches, each ``(task index, feature indices)``, for optimizer step ``step``.

    Task t's k-th micro-step takes slice k (of micro x world features) of its epoch-shuffled order
    (``default_rng(seed + 1000 * t + epoch)``, epoch = k // per_epoch with per_epoch = accum x (n_t // (micro x
    accum x world))); rank r takes its share ``[r*micro:(r+1)*micro]`` of that slice, so ranks never overlap
    and the incomplete last global batch of an epoch is dropped. With one task this is exactly
    ``engine.data.TrainStream``'s order.
    """

    def __init__(self, sizes: list[int], micro: int, accum: int, rank: int, world: int, seed: int,
                 mixing: str = "proportional", temperature: float = 2.0) -> None:
        self.sizes, self.micro, self.rank, self.world, self.seed = list(sizes), micro, rank, world, seed
        self.accum = accum
        self.schedule = TaskSchedule(tuple(sizes), accum, seed, mixing, temperature)
        self.per_epoch = [accum * (n // (micro * accum * world)) for n in sizes]
        small = [i for i, p in enumerate(self.per_epoch) if p == 0]
        if small:
            raise ValueError(f"task {small[0]} has {sizes[small[0]]} training examples, fewer than one global batch "
                             f"({micro} x {accum} x {world}); lower batch_size")
        self._cache: tuple[int, list[int]] | None = None

    def _uses(self, step: int) -> list[int]:
        # incremental: training asks for steps in order, so each call costs one step's draws
        if self._cache is not None and self._cache[0] <= step:
            at, counts = self._cache[0], list(self._cache[1])
            for s in range(at, step):
                for a in range(self.schedule.accum):
                    counts[self.schedule.task_at(s, a)] += 1
        else:
            counts = self.schedule.uses_before(step)
        self._cache = (step, counts)
        return list(counts)

    def step_batches(self, step: int) -> list[tuple[int, list[int]]]:
        uses = self._uses(step)
        out = []
        for a in range(self.schedule.accum):
            t = self.schedule.task_at(step, a)
            k = uses[t]
            uses[t] += 1
            epoch, j = divmod(k, self.per_epoch[t])
            perm = np.random.default_rng(self.seed + 1000 * t + epoch).permutation(self.sizes[t])
            start = (j * self.world + self.rank) * self.micro
            out.append((t, perm[start:start + self.micro].tolist()))
        return out

    def epochs_of(self, step: int) -> float:
        """Passes over the union of training sets by the end of ``step`` (for logs)."""
        return (step * self.schedule.accum * self.micro * self.world) / max(sum(self.sizes), 1)
