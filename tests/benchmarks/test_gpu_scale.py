"""benchmarks/gpu_scale.py starts without a GPU: ``--dry-run`` checks its FLOP formulas against
FlopCounterMode on a tiny llama (pt2, ft, lester) and runs its case loop for 2 steps through DeepSpeed ZeRO-3
on CPU. The GPU figures themselves are never part of the tests."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.engine.conftest import ROOT, env, free_port


def test_dry_run_checks_flop_accounting_and_runs_the_case_loop(tmp_path):
    out = tmp_path / "dry.json"
    e = env()
    e["MASTER_PORT"] = str(free_port())
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_scale.py"), "--dry-run", "--json", str(out)],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["flops_ok"] and {c["method"] for c in res["flop_checks"]} == {"pt2", "ft", "lester"}
    for c in res["flop_checks"]:
        assert abs(c["rel_err"]) <= 0.005 and c["counted"] > 0
    pt2 = next(c for c in res["flop_checks"] if c["method"] == "pt2")
    ft = next(c for c in res["flop_checks"] if c["method"] == "ft")
    assert 0.6 < pt2["counted"] / ft["counted"] < 0.75            # ~4N vs 6N (+ attention)
    case = res["case"]
    assert case["kernel_calls"] == {"sdpa_causal": 4 * 2 * 2}     # 4 layers x (forward + recompute) x 2 steps
    assert case["estimated_bytes"] > 0 and len(case["step_s"]) == 2
