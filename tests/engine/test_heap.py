"""``cap_heap_retention``: on CPU ranks, freed blocks of 1 MiB or more go back to the system.

Each case runs in a fresh process (glibc's allocator state is per process): a 30 MiB block is allocated and
freed first, which raises glibc's *dynamic* mmap threshold to 30 MiB; then 16 blocks of 4 MiB are allocated,
a small tensor is kept alive after them (so the heap top cannot be trimmed) and the 4 MiB blocks are freed.
With the cap, each 4 MiB block was its own mmap and the RSS falls by about 64 MiB; a ``MALLOC_MMAP_THRESHOLD_``
set by the user wins (the function leaves it alone and says so).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.engine.conftest import ROOT, env

CHILD = r"""
import json, sys, psutil, torch
sys.path.insert(0, sys.argv[1])
from megaprompt.engine.distributed import cap_heap_retention
applied = cap_heap_retention() if sys.argv[2] == "cap" else None
big = torch.ones(30 * 2**20 // 4); del big            # raises glibc's dynamic threshold
blocks = [torch.ones(2**20) for _ in range(16)]       # 16 x 4 MiB, touched
keep = torch.ones(16)                                 # a live allocation above them
rss = psutil.Process().memory_info().rss
del blocks
print(json.dumps({"applied": applied, "freed_mib": (rss - psutil.Process().memory_info().rss) / 2**20}))
"""


def child(mode: str, **extra: str) -> dict:
    e = env()
    e.update(extra)
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode], env=e, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_capped_rank_returns_freed_blocks():
    res = child("cap")
    assert res["applied"] is True
    assert res["freed_mib"] > 48


def test_user_setting_wins():
    assert child("cap", MALLOC_MMAP_THRESHOLD_="2097152")["applied"] is False
