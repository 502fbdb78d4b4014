#!/usr/bin/env python
"""Serving many task prompts on one backbone: mixed-batch throughput and memory per loaded task.

Exports: ``--max_tasks`` (64) P-Tuning v2 exports on one backbone (default: the pretrained all-MiniLM-L6-v2),
each with its own prefix (prompt lengths cycle through 8, 16, 24, 32, so the bank pads and masks per row) and
its own 2-label head, written once under ``--workdir``. They are loaded through ``assemble.load_exports``, the
path ``megaprompt.serve`` uses.

* **Throughput** (``mixed_over_single``): 4 tasks. One *mixed* forward of ``--batch`` rows whose ``task_ids``
  cycle through the 4 tasks, against ``4`` *single-task* forwards of ``batch/4`` rows each (the same rows, the
  same total size), no grad. Rounds interleave the two (order alternating); the ratio is the median single
  time over the median mixed time (> 1: mixing is faster). Target >= 0.9.
* **Memory** (``mem_per_task_mb``): resident set size after loading 1, 4, 16 and 64 exports (each in a fresh
  subprocess, after a forward, so lazily allocated buffers count), the growth per added task, and the bytes of
  each task's prompt + head tensors. Target: the growth per task is within 10% of those bytes plus a fixed
  overhead (``fixed_mb``, the intercept of the least-squares line over those counts).

    python benchmarks/multi_prompt.py [--backbone minilm] [--batch 32] [--seq 64] [--repeats 15] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT_LENS = (8, 16, 24, 32)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def make_exports(backbone: str, n: int, workdir: Path) -> list[str]:
    """``n`` exports t0..t{n-1} on ``backbone`` (written once, reused)."""
    from megaprompt.assemble import save_model_export
    from megaprompt.backbones.load import load_backbone
    from megaprompt.model import TaskSlot, build_model
    from megaprompt.prompts import PromptConfig

    paths = [workdir / f"t{i}" for i in range(n)]
    if all((p / "export.json").is_file() for p in paths):
        return [str(p) for p in paths]
    bb, *_ = load_backbone(backbone, seed=0)
    for i, path in enumerate(paths):
        torch.manual_seed(i)
        cfg = PromptConfig(method="pt2", prompt_len=PROMPT_LENS[i % len(PROMPT_LENS)], prefix_dropout=0.0)
        model = build_model(bb, cfg, [TaskSlot(f"t{i}", "cls", 2)], name=backbone, head_dropout=0.0)
        save_model_export(model, path, tasks={f"t{i}": {"label_names": ["neg", "pos"]}},
                          extra={"backbone_arg": backbone, "seed": 0})
    return [str(p) for p in paths]


def task_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors"))


def batch(model, rows: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = model.backbone.get_input_embeddings().weight.shape[0]
    ids = torch.randint(1000, vocab, (rows, seq), generator=g)
    mask = torch.ones_like(ids)
    lengths = torch.randint(seq // 2, seq + 1, (rows,), generator=g)
    mask[torch.arange(seq)[None, :] >= lengths[:, None]] = 0      # real-looking padding
    return {"input_ids": ids, "attention_mask": mask}


def throughput(paths: list[str], rows: int, seq: int, repeats: int) -> dict[str, float]:
    from megaprompt.assemble import load_exports

    model = load_exports(paths[:4], with_tokenizer=False)[0]
    b = batch(model, rows, seq)
    task_ids = torch.arange(rows) % 4
    parts = [{k: v[task_ids == t] for k, v in b.items()} for t in range(4)]

    @torch.no_grad()
    def mixed() -> None:
        model(**b, task_ids=task_ids)

    @torch.no_grad()
    def single() -> None:
        for t, part in enumerate(parts):
            model(**part, task=f"t{t}")

    # the same rows give the same logits either way (what makes the comparison fair)
    with torch.no_grad():
        got = model(**b, task_ids=task_ids)["logits"]
        for t, part in enumerate(parts):
            np.testing.assert_allclose(got[task_ids == t].numpy(), model(**part, task=f"t{t}")["logits"].numpy(),
                                       atol=1e-4, rtol=0)
    mixed(), single()                     # warm-up
    times: dict[str, list[float]] = {"mixed": [], "single": []}
    for r in range(repeats):
        for name, fn in ((("mixed", mixed), ("single", single)) if r % 2 == 0 else (("single", single), ("mixed", mixed))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"mixed_s": med["mixed"], "single_s": med["single"], "mixed_over_single": med["single"] / med["mixed"],
            "rows": rows, "seq": seq, "repeats": repeats}


def rss_after_loading(paths: list[str], seq: int) -> dict[str, float]:
    """In this (fresh) process: RSS before anything, with the backbone alone, and with ``paths`` loaded."""
    from megaprompt.assemble import load_exports
    from megaprompt.serve import release_host_memory

    base = _rss_mb()
    model = load_exports(paths, with_tokenizer=False)[0]      # the exports' read tensors are freed: copied in
    b = batch(model, 4, seq)
    with torch.no_grad():
        model(**b, task_ids=torch.arange(4) % len(paths))
    release_host_memory()      # as megaprompt.serve.Server does; after the forward, whose transients are freed
    return {"start_mb": base, "loaded_mb": _rss_mb()}


def memory(paths: list[str], seq: int, counts: list[int]) -> dict[str, object]:
    out = {}
    for k in counts:
        res = subprocess.run([sys.executable, __file__, "--_rss", json.dumps(paths[:k]), "--seq", str(seq)],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        out[k] = json.loads(res.stdout.strip().splitlines()[-1])["loaded_mb"]
    ks = sorted(out)
    slope, intercept = np.polyfit(ks, [out[k] for k in ks], 1)
    per_task_bytes = statistics.mean(task_bytes(p) for p in paths[:max(ks)])
    return {"rss_mb": {str(k): round(v, 1) for k, v in out.items()}, "mem_per_task_mb": float(slope),
            "task_tensor_mb": per_task_bytes / 2**20, "fixed_mb": float(intercept),
            "per_task_over_tensors": float(slope / (per_task_bytes / 2**20))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--batch", type=int, default=32, help="rows per mixed forward (4 tasks x batch/4)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--max_tasks", type=int, default=64,
                    help="exports written; RSS is read with 1, 4, 16 and this many loaded (the slope over them is "
                         "mem_per_task_mb: more tasks average out the allocator's page-level noise)")
    ap.add_argument("--workdir", default=None, help="where the exports are written (default: a temp dir)")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--_rss", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._rss:
        print(json.dumps(rss_after_loading(json.loads(args._rss), args.seq)))
        return 0
    if args.batch % 4:
        ap.error("--batch must be a multiple of 4")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        paths = make_exports(args.backbone, args.max_tasks, workdir)
        load0 = os.getloadavg()[0]
        result = {"backbone": args.backbone, "threads": torch.get_num_threads(),
                  **throughput(paths, args.batch, args.seq, args.repeats),
                  **memory(paths, args.seq, sorted({k for k in (1, 4, 16) if k <= args.max_tasks} | {args.max_tasks}))}
        result["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(f"{args.backbone}: mixed batch of {args.batch} rows (4 tasks) {result['mixed_s'] * 1e3:.1f} ms vs 4 "
          f"single-task batches {result['single_s'] * 1e3:.1f} ms -> mixed_over_single {result['mixed_over_single']:.2f}"
          f" (target >= 0.9)")
    print(f"RSS by tasks loaded: {result['rss_mb']} MB -> {result['mem_per_task_mb']:.3f} MB per task "
          f"(prompt + head tensors {result['task_tensor_mb']:.3f} MB; ratio {result['per_task_over_tensors']:.2f}, "
          f"target within 10%), fixed {result['fixed_mb']:.0f} MB; load average {result['load_avg']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
