"""``StepTotals``: losses stay on the device per micro-batch; one collective per optimizer step stops a NaN.

* ``add`` never syncs with the host: it runs on meta-device losses, where any ``.item()``, ``bool()`` or
  data-dependent branch raises;
* 2 gloo ranks: ``finish`` returns the global mean loss, issues exactly one collective per step however many
  micro-batches there were, and a NaN on one rank's second micro-batch stops *both* ranks with the step number.
The loop's use of it is covered by tests/engine/test_loop.py (a diverging run stops naming its step).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from megaprompt.engine.totals import StepTotals
from tests.engine.conftest import ROOT, env, free_port


def test_add_never_touches_the_host():
    totals = StepTotals(torch.device("meta"), grad_accum=4, world=1)
    for _ in range(4):
        totals.add(torch.empty((), device="meta", requires_grad=True) * 2)
    assert totals.micro == 4 and totals._sum.device.type == "meta"
    with pytest.raises(Exception):       # the one host read is in finish(): impossible on meta
        totals.finish(1)


def test_mean_and_nan_in_one_process():
    totals = StepTotals(torch.device("cpu"), grad_accum=3, world=1)
    for v in (1.0, 2.0, 6.0):
        totals.add(torch.tensor(v))
    assert totals.finish(7) == pytest.approx(3.0)
    totals.add(torch.tensor(1.0))
    totals.add(torch.tensor(float("inf")))
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 8"):
        totals.finish(8)


WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.environ["ROOT"])
from megaprompt.engine.totals import StepTotals
dist.init_process_group("gloo")
rank = dist.get_rank()
calls = []
real = dist.all_reduce
dist.all_reduce = lambda *a, **k: (calls.append(1), real(*a, **k))[1]     # an observer: counts collectives
out = {}
totals = StepTotals(torch.device("cpu"), grad_accum=3, world=2)
for v in ([1.0, 2.0, 3.0] if rank == 0 else [4.0, 5.0, 6.0]):
    totals.add(torch.tensor(v))
out["mean"] = totals.finish(1)
out["calls_step1"] = len(calls)
for v in ([1.0, 1.0, 1.0] if rank == 0 else [1.0, float("nan"), 1.0]):
    totals.add(torch.tensor(v))
try:
    totals.finish(2)
    out["error"] = None
except FloatingPointError as err:
    out["error"] = str(err)
out["calls_total"] = len(calls)
json.dump(out, open(os.path.join(os.environ["OUT"], f"rank{rank}.json"), "w"))
dist.destroy_process_group()
"""


def test_two_ranks_one_collective_per_step_and_nan_stops_both(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    e = env()
    e.update(ROOT=str(ROOT), OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(script)], env=e, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert out["mean"] == pytest.approx(3.5)            # (1+2+3+4+5+6) / 6, on both ranks
        assert out["calls_step1"] == 1 and out["calls_total"] == 2
        assert out["error"] is not None and "at step 2" in out["error"] and "nan" in out["error"]
