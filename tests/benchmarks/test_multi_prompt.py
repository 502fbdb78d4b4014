"""benchmarks/multi_prompt.py on a tiny backbone: the mixed and single-task forwards give the same logits (the
script asserts it before timing), RSS is read for each count of loaded tasks, and the per-task tensor size it
compares against is the prompt table + head counted by hand. The figures themselves are not asserted."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.engine.conftest import ROOT, env


def test_multi_prompt_runs_and_counts_task_bytes_by_hand(tmp_path):
    out = tmp_path / "mp.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "multi_prompt.py"), "--backbone", "tiny-bert",
                           "--max_tasks", "4", "--batch", "8", "--seq", "16", "--repeats", "1",
                           "--workdir", str(tmp_path / "exports"), "--json", str(out)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["rss_mb"]) == {"1", "4"} and res["mixed_s"] > 0 and res["single_s"] > 0
    # tiny-bert: 2 layers, hidden 64; prompt lengths 8, 16, 24, 32 (mean 20); fp32 table (L, 2, H, P, d) + a
    # (2, 64) linear head with bias; safetensors adds a small header per file
    table = 2 * 2 * 64 * 20 * 4
    head = (2 * 64 + 2) * 4
    assert table + head <= res["task_tensor_mb"] * 2**20 <= table + head + 4 * 256
    assert "mixed_over_single" in proc.stdout
