#!/usr/bin/env python
"""Training step time and peak memory of pt2, ft, lester and head (+ pt2 with gradient checkpointing).

All methods wrap the same randomly initialised backbone (default: a BERT-base config - hidden 768, 12 layers,
12 heads, intermediate 3072, vocab 30522) and train on the same random batch (default batch 8, seq 128,
prompt_len 16). A *step* is forward + backward + ``torch.optim.AdamW`` over the trainable parameters only,
then ``zero_grad(set_to_none=True)``. Models are in training mode with their default dropouts.

Timing is interleaved: every round runs one step of every method (the order rotates each round), after
``--warmup`` rounds; the table shows per-method medians over ``--repeats`` rounds and the ratios. The
machine is shared and noisy, so interleaving keeps slow phases from favouring one method.

Peak memory:
* CUDA: ``torch.cuda.max_memory_allocated`` over each method's timed steps (reset before each step).
* CPU: ``ru_maxrss`` is monotonic over a process's lifetime, so each method is measured in a *fresh
  subprocess* that builds the same model and samples its own RSS with psutil every ``--mem-interval``
  seconds from a thread (torch releases the GIL in its kernels, so the sampler keeps running) while it runs
  ``--mem-steps`` steps. ``peak_mem_mb`` is the peak RSS during the steps (weights included, like
  max_memory_allocated); ``step_mem_mb`` is that peak minus the RSS just before the first step (activations,
  gradients and optimizer state). glibc may keep freed memory, so RSS is an upper bound on live tensors.

Usage::

    python benchmarks/step_time.py [--repeats 7] [--warmup 1] [--batch 8] [--seq 128] [--layers 12]
                                   [--device cpu|cuda] [--threads N] [--json PATH] [--no-mem]

Targets (median step-time ratios): pt2 <= 0.65 x ft; pt2 <= 1.10 x head; pt2+ckpt <= 1.4 x pt2.

``--attention-compare`` times pt2 (and pt2+ckpt, if in ``--methods``) on the reference attention path
(explicit (B, 1, L, P+L) mask per layer) against the fused kernels of ``megaprompt.backbones.kernels``, on the
same model and batch, alternating the order every round; it reports medians, the new/old ratio (target:
<= 1.0, no regression) and the load average before and after.
``--methods`` may add ``pt2+ckpt2`` (checkpoint every 2nd layer). ``--threads 1`` with the reported CPU
seconds is the most repeatable measure on a shared machine (no OpenMP spin-waiting in the CPU time).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

METHODS = ("pt2", "pt2+ckpt", "ft", "lester", "head", "pt2+ckpt2")
DEFAULT_METHODS = ("pt2", "pt2+ckpt", "ft", "lester", "head")
TARGETS = {"pt2_over_ft": 0.65, "pt2_over_head": 1.10, "pt2_ckpt_over_pt2": 1.4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help="comma list of " + ", ".join(METHODS) + " (pt2+ckpt2: checkpoint every 2nd layer)")
    ap.add_argument("--model-type", default="bert", help="transformers model_type of the random backbone")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="decoders only (GQA)")
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (one step of every method each)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses (CPU)")
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--mem-interval", type=float, default=0.002)
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--attention-compare", dest="attention_compare", action="store_true",
                    help="pt2 (and pt2+ckpt) steps on the reference attention path vs the fused kernels, "
                         "interleaved; reports medians and the new/old ratio")
    ap.add_argument("--no-pad", dest="no_pad", action="store_true", help="no padded sequences in the batch")
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; expected some of {', '.join(METHODS)}")
    return args


# ---- models ------------------------------------------------------------------------------------------------
def backbone_config(args: argparse.Namespace):
    from transformers import AutoConfig

    kw: dict[str, Any] = dict(hidden_size=args.hidden, num_hidden_layers=args.layers,
                              num_attention_heads=args.heads, intermediate_size=args.intermediate,
                              vocab_size=args.vocab, max_position_embeddings=max(512, args.seq + args.prompt_len))
    if args.kv_heads:
        kw["num_key_value_heads"] = args.kv_heads
    return AutoConfig.for_model(args.model_type, **kw)


def build_backbone(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import AutoModel

    torch.manual_seed(args.seed)
    return AutoModel.from_config(backbone_config(args), dtype=getattr(torch, args.dtype))


def build_method(args: argparse.Namespace, method: str, backbone: torch.nn.Module):
    """(model, optimizer) for one method; ``backbone`` is used as is (pass a copy)."""
    from megaprompt.model import build_model
    from megaprompt.prompts import PromptConfig

    name = method.split("+")[0]
    cfg = PromptConfig(method=name, prompt_len=args.prompt_len)
    model = build_model(backbone, cfg, "cls", 2).to(device=args.device)
    if method == "pt2+ckpt":
        model.enable_gradient_checkpointing()
    elif method == "pt2+ckpt2":
        model.enable_gradient_checkpointing(every_n_layers=2)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    return model, opt


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(5, args.vocab, (args.batch, args.seq), generator=g)
    mask = torch.ones_like(ids)
    # a realistic batch: some sequences right-padded
    for b in range(1, args.batch, 2) if not args.no_pad else ():
        cut = args.seq - (b * args.seq) // (2 * args.batch)
        mask[b, cut:] = 0
        ids[b, cut:] = 0
    labels = torch.randint(0, 2, (args.batch,), generator=g)
    return {k: v.to(args.device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(model, opt, batch) -> float:
    out = model(**batch)
    out["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out["loss"].detach())


# ---- peak memory (CPU: one fresh subprocess per method) --------------------------------------------------
def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def mem_child(args: argparse.Namespace) -> None:
    """Subprocess entry: build one method, run steps while sampling RSS, print one JSON line."""
    method = args.mem_child
    model, opt = build_method(args, method, build_backbone(args))
    batch = make_batch(args)
    base = rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(args.mem_interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    for _ in range(args.mem_steps):
        step(model, opt, batch)
    done.set()
    t.join()
    peak[0] = max(peak[0], rss_mb())
    print(json.dumps({"method": method, "peak_mem_mb": peak[0], "base_mem_mb": base,
                      "step_mem_mb": peak[0] - base}))


def measure_cpu_memory(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for method in args.methods:
        cmd = [sys.executable, __file__, *argv, "--_mem-child", method]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if res.returncode != 0 or not lines:
            raise RuntimeError(f"memory subprocess for {method} failed:\n{res.stderr[-2000:]}")
        out[method] = json.loads(lines[-1])
    return out


# ---- main ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    base = build_backbone(args)
    models = {m: build_method(args, m, copy.deepcopy(base)) for m in args.methods}
    del base
    batch = make_batch(args)
    cuda = args.device.startswith("cuda")
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    cpu_times: dict[str, list[float]] = {m: [] for m in args.methods}
    cuda_peak: dict[str, float] = {m: 0.0 for m in args.methods}
    order = list(args.methods)
    for r in range(args.warmup + args.repeats):
        k = r % len(order)
        this_round: dict[str, float] = {}
        for m in order[k:] + order[:k]:          # rotate so no method always runs first/last
            model, opt = models[m]
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            step(model, opt, batch)
            sync(args.device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if cuda:
                cuda_peak[m] = max(cuda_peak[m], torch.cuda.max_memory_allocated() / 2**20)
            this_round[m] = dt
            if r >= args.warmup:
                times[m].append(dt)
                cpu_times[m].append(dc)
        print(f"  round {r + 1}/{args.warmup + args.repeats}{' (warmup)' if r < args.warmup else ''}: "
              + ", ".join(f"{m} {this_round[m]:.3f}s" for m in order), file=sys.stderr, flush=True)
    del models

    med = {m: statistics.median(v) for m, v in times.items()}
    res: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "mem_child")},
        "threads": torch.get_num_threads(),
        "median_step_s": med,
        "min_step_s": {m: min(v) for m, v in times.items()},
        "step_times_s": times,
        # CPU seconds of this process per step (all threads): less sensitive than wall time to other
        # processes competing for the cores; with --threads 1 it is close to the work done.
        "median_cpu_s": {m: statistics.median(v) for m, v in cpu_times.items()},
    }
    if cuda:
        res["peak_mem_mb"] = cuda_peak
        res["mem_method"] = "torch.cuda.max_memory_allocated"
    elif not args.no_mem:
        mem = measure_cpu_memory(args, argv)
        res["peak_mem_mb"] = {m: mem[m]["peak_mem_mb"] for m in args.methods}
        res["step_mem_mb"] = {m: mem[m]["step_mem_mb"] for m in args.methods}
        res["mem_method"] = "peak RSS (psutil sampler thread) in a fresh subprocess per method"

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med and b in med else None

    res["pt2_over_ft"] = ratio("pt2", "ft")
    res["pt2_over_head"] = ratio("pt2", "head")
    res["pt2_ckpt_over_pt2"] = ratio("pt2+ckpt", "pt2")
    res["pt2_over_lester"] = ratio("pt2", "lester")
    cpu = res["median_cpu_s"]
    res["cpu_time_ratios"] = {
        "pt2_over_ft": cpu["pt2"] / cpu["ft"] if {"pt2", "ft"} <= cpu.keys() else None,
        "pt2_over_head": cpu["pt2"] / cpu["head"] if {"pt2", "head"} <= cpu.keys() else None,
        "pt2_ckpt_over_pt2": cpu["pt2+ckpt"] / cpu["pt2"] if {"pt2+ckpt", "pt2"} <= cpu.keys() else None,
    }
    res["targets"] = {k: {"target": v, "value": res[k], "met": res[k] is not None and res[k] <= v}
                      for k, v in TARGETS.items()}
    return res


def print_table(res: dict[str, Any]) -> None:
    c = res["config"]
    print(f"\nstep time: {c['model_type']} hidden {c['hidden']} x {c['layers']} layers, batch {c['batch']}, "
          f"seq {c['seq']}, prompt_len {c['prompt_len']}, {c['device']} ({res['threads']} threads), "
          f"{c['repeats']} interleaved rounds after {c['warmup']} warmup")
    med = res["median_step_s"]
    ref = med.get("pt2")
    has_mem = "peak_mem_mb" in res
    head = f"{'method':<10} {'median s':>9} {'min s':>8} {'x pt2':>7} {'cpu s':>8}"
    if has_mem:
        head += f" {'peak MB':>9}" + (f" {'step MB':>8}" if "step_mem_mb" in res else "")
    print(head)
    print("-" * len(head))
    for m, t in med.items():
        row = (f"{m:<10} {t:>9.3f} {res['min_step_s'][m]:>8.3f} {(t / ref if ref else float('nan')):>7.2f}"
               f" {res['median_cpu_s'][m]:>8.3f}")
        if has_mem:
            row += f" {res['peak_mem_mb'][m]:>9.0f}"
            if "step_mem_mb" in res:
                row += f" {res['step_mem_mb'][m]:>8.0f}"
        print(row)
    print()
    for k, t in res["targets"].items():
        v = t["value"]
        shown = "n/a" if v is None else f"{v:.3f}"
        cv = res["cpu_time_ratios"].get(k)
        cpu_shown = "" if cv is None else f"   (cpu-time ratio {cv:.3f})"
        print(f"{k:<18} {shown:>7}  target <= {t['target']:.2f}  {'MET' if t['met'] else 'NOT MET'}{cpu_shown}")
    if res.get("pt2_over_lester") is not None:
        print(f"{'pt2_over_lester':<18} {res['pt2_over_lester']:>7.3f}  (no target)")
    if "mem_method" in res:
        print(f"memory: {res['mem_method']}")


def attention_compare(args: argparse.Namespace) -> dict[str, Any]:
    """Reference (explicit-mask) attention vs the fused kernels on the same pt2 model and batch, interleaved
    (the order alternates every round); per-variant medians of wall and CPU seconds and new/old ratios."""
    from megaprompt.backbones.kernels import KERNEL_CALLS, attention_kernels, kernels

    base = build_backbone(args)
    methods = [m for m in args.methods if m.startswith("pt2")] or ["pt2"]
    models = {m: build_method(args, m, copy.deepcopy(base)) for m in methods}
    batch = make_batch(args)
    variants = {"old": ("reference",), "new": attention_kernels(args.device)}
    times = {(m, v): [] for m in methods for v in variants}
    cpu = {(m, v): [] for m in methods for v in variants}
    load_before = os.getloadavg()
    calls_before = KERNEL_CALLS.copy()
    for r in range(args.warmup + args.repeats):
        for m in methods:
            model, opt = models[m]
            for v in (("old", "new") if r % 2 == 0 else ("new", "old")):
                with kernels(*variants[v]):
                    sync(args.device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    step(model, opt, batch)
                    sync(args.device)
                if r >= args.warmup:
                    times[(m, v)].append(time.perf_counter() - t0)
                    cpu[(m, v)].append(time.process_time() - c0)
    res: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "mem_child")},
                           "threads": torch.get_num_threads(), "loadavg_before": load_before,
                           "loadavg_after": os.getloadavg(), "new_kernels": list(variants["new"]),
                           "kernel_calls": {k: n - calls_before.get(k, 0) for k, n in KERNEL_CALLS.items()
                                            if n != calls_before.get(k, 0)}}
    for m in methods:
        old, new = statistics.median(times[(m, "old")]), statistics.median(times[(m, "new")])
        cold, cnew = statistics.median(cpu[(m, "old")]), statistics.median(cpu[(m, "new")])
        res[m] = {"old_median_s": old, "new_median_s": new, "new_over_old": new / old,
                  "old_median_cpu_s": cold, "new_median_cpu_s": cnew, "cpu_new_over_old": cnew / cold,
                  "old_s": times[(m, "old")], "new_s": times[(m, "new")]}
        print(f"{m:<9} reference {old:.3f}s  fused {new:.3f}s  new/old {new / old:.3f}  "
              f"(cpu-time ratio {cnew / cold:.3f})")
    print(f"load average before {load_before[0]:.2f}, after {res['loadavg_after'][0]:.2f}; kernels run "
          f"{res['kernel_calls']}")
    return res


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attention_compare:
        res = attention_compare(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    if args.mem_child:
        mem_child(args)
        return 0
    child_argv = [a for a in argv if a != "--json"]
    if "--json" in argv:  # the memory children never write the JSON
        i = argv.index("--json")
        child_argv = argv[:i] + argv[i + 2:]
    res = run(args, child_argv)
    print_table(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
