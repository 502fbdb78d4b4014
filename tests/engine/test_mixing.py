"""Multi-task mixing: which task each micro-step trains (same on every rank, a pure function of (seed, step)),
the proportions of each schedule, and each task's own resumable order; one task = ``TrainStream`` exactly."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from megaprompt.engine.data import TrainStream
from megaprompt.engine.mixing import MultiTaskStream, TaskSchedule


@pytest.mark.parametrize("accum,world", [(1, 1), (3, 2), (2, 4)])
def test_one_task_is_exactly_the_single_task_order(accum, world):
    for rank in range(world):
        old = TrainStream(203, 4, accum, rank, world, seed=7)
        new = MultiTaskStream([203], 4, accum, rank, world, seed=7)
        for step in range(3 * old.steps_per_epoch + 2):            # across epoch boundaries
            assert [i for _, i in new.step_batches(step)] == old.step_indices(step), (rank, step)
            assert {t for t, _ in new.step_batches(step)} == {0}


@pytest.mark.parametrize("mixing,temperature", [("proportional", 1.0), ("temperature", 2.0), ("temperature", 4.0)])
def test_sampled_proportions_match_the_schedule(mixing, temperature):
    sizes = (800, 200, 40)
    sched = TaskSchedule(sizes, accum=2, seed=3, mixing=mixing, temperature=temperature)
    n = np.asarray(sizes, float)
    want = n / n.sum() if mixing == "proportional" else n ** (1 / temperature) / (n ** (1 / temperature)).sum()
    np.testing.assert_allclose(sched.probabilities, want, rtol=1e-12)
    draws = collections.Counter(sched.task_at(s, a) for s in range(6000) for a in range(2))
    freq = np.array([draws[t] for t in range(3)]) / 12000
    np.testing.assert_allclose(freq, want, atol=0.015)          # ~4 standard errors at 12000 draws
    # temperature flattens: the smallest task gets more than its proportional share
    if mixing == "temperature":
        assert freq[2] > 40 / 1040 + 0.02


def test_round_robin_cycles_micro_step_by_micro_step():
    sched = TaskSchedule((5, 100, 7), accum=2, seed=0, mixing="round_robin")
    assert [sched.task_at(s, a) for s in range(3) for a in range(2)] == [0, 1, 2, 0, 1, 2]
    assert sched.uses_before(3) == [2, 2, 2] and sched.uses_before(2) == [2, 1, 1]


def test_schedule_is_a_pure_function_of_seed_and_step():
    a = TaskSchedule((100, 60), accum=3, seed=11)
    b = TaskSchedule((100, 60), accum=3, seed=11)
    seq = [a.task_at(s, m) for s in range(200) for m in range(3)]
    assert seq == [b.task_at(s, m) for s in range(200) for m in range(3)]
    assert seq[::-1] == [a.task_at(s, m) for s in reversed(range(200)) for m in reversed(range(3))]  # any order
    assert seq != [TaskSchedule((100, 60), accum=3, seed=12).task_at(s, m) for s in range(200) for m in range(3)]
    assert len(set(seq)) == 2


def test_every_rank_runs_the_same_task_on_disjoint_rows_and_resume_is_exact():
    sizes, micro, accum, world = [97, 41, 60], 3, 2, 2
    streams = [MultiTaskStream(sizes, micro, accum, r, world, seed=5, mixing="temperature") for r in range(world)]
    for step in range(40):
        per_rank = [s.step_batches(step) for s in streams]
        for a in range(accum):
            tasks = {pr[a][0] for pr in per_rank}
            assert len(tasks) == 1                               # ZeRO-3: the same head on every rank
            rows = [set(pr[a][1]) for pr in per_rank]
            assert not rows[0] & rows[1] and all(len(r) == micro for r in rows)
    # a stream built fresh at step 30 (a resumed job) continues exactly
    fresh = MultiTaskStream(sizes, micro, accum, 1, world, seed=5, mixing="temperature")
    assert [fresh.step_batches(s) for s in range(30, 40)] == [streams[1].step_batches(s) for s in range(30, 40)]


def test_each_task_sees_its_rows_once_per_epoch():
    sizes, micro, world = [50, 23], 2, 1
    stream = MultiTaskStream(sizes, micro, 1, 0, world, seed=1, mixing="round_robin")
    seen = collections.defaultdict(list)
    for step in range(2 * (23 // 2)):                          # task 1: exactly one epoch (11 micro-steps)
        for t, idx in stream.step_batches(step):
            seen[t] += idx
    assert sorted(seen[1]) == sorted(set(seen[1])) and len(seen[1]) == 22   # 23 // 2 batches, tail dropped
    assert len(set(seen[0])) == len(seen[0]) == 22


def test_a_task_too_small_for_one_global_batch_is_an_error():
    with pytest.raises(ValueError, match="task 1 has 5 training examples, fewer than one global batch"):
        MultiTaskStream([100, 5], 2, 2, 0, 2, seed=0)
