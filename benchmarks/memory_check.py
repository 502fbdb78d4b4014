#!/usr/bin/env python
"""Validate ``megaprompt-memory`` against real DeepSpeed ZeRO-3 runs: estimated vs measured model-state bytes.

For 1 and 2 ranks (``--worlds``) and each method (ft, pt2, lester, head), train a small backbone for two
steps through ``deepspeed.initialize`` (ZeRO-3; the optimizer gets only the trainable parameters; the
backbone is built by ``AutoModel.from_config`` with ``HfDeepSpeedConfig`` alive, so ``zero.Init``
partitions it at construction - the path megaprompt's engine takes), then read the engine's own tensors
on every rank:

* frozen / trainable weights: ``p.ds_tensor`` (the rank's partition) of frozen / trainable parameters;
* gradients: ``optimizer.grad_partitions_flat_buffer`` (plus fp32 gradients under optimizer offload);
* master weights: ``optimizer.fp32_partitioned_groups_flat``;
* optimizer states: every tensor in ``optimizer.optimizer.state``.

Bytes are counted as the union of address ranges, so a tensor that aliases another (fp32 master weights
*are* the parameter partition in fp32 training) is counted once. Also reported, outside the model-state
comparison: persistent parameters kept gathered and the reduce bucket. On GPU, ``torch.cuda.max_memory_
allocated`` is recorded too.

Usage (CPU: DS_ACCELERATOR=cpu, gloo; each world size is one ``torchrun`` job that loops over methods)::

    python benchmarks/memory_check.py [--worlds 1,2] [--methods ft,pt2,lester,head] [--backbone tiny-bert]
                                      [--json PATH] [--csv PATH]

Target: every case within 10% (``rel_err = (estimated - measured) / measured``); exit status 1 otherwise.

``--scale`` runs the whole-process check on a ~1B llama-shaped model instead (``benchmarks/memory_scale.py``:
per-rank peak RSS of pt2 and ft vs ``megaprompt-memory --device cpu``, target 15%).
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.10
COMPONENTS = ("frozen_weights", "trainable_weights", "gradients", "master_weights", "optimizer_states")


def ds_config(args: argparse.Namespace) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {
            "stage": 3,
            "contiguous_gradients": True,
            "overlap_comm": False,
            "reduce_bucket_size": int(args.reduce_bucket_size),
            "stage3_prefetch_bucket_size": int(args.prefetch_bucket_size),
            "stage3_param_persistence_threshold": int(args.persistence_threshold),
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if args.offload_optimizer:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        cfg["zero_force_ds_cpu_optimizer"] = False   # keep torch's AdamW (DeepSpeedCPUAdam needs a compiled op)
    if args.dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


# ---- worker (one per rank, launched by torchrun) -----------------------------------------------------------
class Ranges:
    """Union of byte ranges: counts aliased storage once."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def add(self, t) -> int:
        """Add tensor ``t``; return how many of its bytes were not already counted."""
        import torch

        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return 0
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        new = hi - lo
        for a, b in self.spans:
            new -= max(0, min(hi, b) - max(lo, a))
        self.spans.append((lo, hi))
        return max(new, 0)


def measure_engine(engine, model) -> dict[str, int]:
    opt = engine.optimizer
    seen = Ranges()
    out = dict.fromkeys(COMPONENTS, 0)
    for p in model.parameters():
        out["trainable_weights" if p.requires_grad else "frozen_weights"] += seen.add(p.ds_tensor)
    out["gradients"] += seen.add(getattr(opt, "grad_partitions_flat_buffer", None))
    for fp32 in opt.fp32_partitioned_groups_flat:
        if getattr(opt, "offload_optimizer", False) and fp32.grad is not None:
            out["gradients"] += seen.add(fp32.grad)  # the persistent fp32 gradient buffer on CPU
        out["master_weights"] += seen.add(fp32)
    for state in opt.optimizer.state.values():
        for v in state.values():
            out["optimizer_states"] += seen.add(v)
    extra = {"persistent_params": 0, "reduce_bucket": 0}
    for p in model.parameters():
        if getattr(p, "ds_persist", False) and p.data.numel() == p.ds_numel:
            extra["persistent_params"] += seen.add(p.data)
    for bucket in getattr(opt, "ipg_buckets", {}).values():
        extra["reduce_bucket"] += seen.add(getattr(bucket, "buffer", None))
    return {**out, **extra}


def run_case(args: argparse.Namespace, method: str) -> dict:
    import deepspeed
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    from megaprompt.costs.params import build_prompted, make_prompt_config, resolve_backbone

    cfg = ds_config(args)
    dschf = HfDeepSpeedConfig(cfg)  # must stay alive while the backbone is built (zero.Init)
    torch.manual_seed(0)
    bb = resolve_backbone(args.backbone)
    model = build_prompted(bb, make_prompt_config(method, args.prompt_len), "cls", 2, device="cpu")
    if args.dtype == "bf16":
        # The prompt and head are built after (outside) zero.Init, in fp32; ZeRO-3 flattens all trainable
        # partitions into one buffer and asserts a single dtype, so they must match the backbone's.
        for p in model.parameters():
            if not hasattr(p, "ds_id"):
                p.data = p.data.to(torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    del dschf
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    dev = engine.device
    g = torch.Generator().manual_seed(1 + engine.global_rank)
    for _ in range(args.steps):
        ids = torch.randint(5, 1000, (args.batch_size, args.seq_len), generator=g).to(dev)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (args.batch_size,), generator=g).to(dev)
        out = engine(input_ids=ids, attention_mask=mask, labels=labels)
        engine.backward(out["loss"])
        engine.step()
    rec = {"method": method, "rank": engine.global_rank, "world": engine.world_size,
           "measured": measure_engine(engine, engine.module)}
    lin = torch.nn.functional.linear  # zero.Init's memory_efficient_linear swaps it (activations.py emulates)
    rec["functional_linear"] = f"{lin.__module__}.{lin.__name__}"
    if on_gpu:
        rec["cuda_max_memory_allocated"] = int(torch.cuda.max_memory_allocated())
    engine.destroy()
    del engine, optimizer, model, out
    gc.collect()
    return rec


def worker(args: argparse.Namespace) -> int:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if os.environ.get("DS_ACCELERATOR") == "cpu" else None)
    rank = int(os.environ.get("RANK", "0"))
    recs = [run_case(args, m) for m in args.methods.split(",")]
    with open(f"{args.worker_out}.rank{rank}.json", "w") as f:
        json.dump(recs, f)
    return 0


# ---- driver -------------------------------------------------------------------------------------------------
def estimate_case(args: argparse.Namespace, method: str, world: int) -> dict:
    from megaprompt.costs.memory import Setup, estimate, prepare

    setup = Setup(stage=3, nodes=1, gpus_per_node=world, dtype=args.dtype, offload_optimizer=args.offload_optimizer,
                  batch_size=args.batch_size, seq_len=args.seq_len, reduce_bucket_size=int(args.reduce_bucket_size),
                  prefetch_bucket_size=int(args.prefetch_bucket_size),
                  persistence_threshold=int(args.persistence_threshold), overlap_comm=False)
    mc = prepare(args.backbone, method, setup, prompt_len=args.prompt_len, with_activations=False)
    est = estimate(mc.facts, setup, 0, method)
    comp = {k: est.gpu.get(k, 0) + est.cpu.get(k, 0) for k in COMPONENTS}
    w = 2 if args.dtype == "bf16" else 4
    persistent = sum(s for s in mc.facts.trainable + mc.facts.frozen if s <= setup.persistence_threshold) \
        if world > 1 else 0
    return {**comp, "model_states": est.model_states, "persistent_params": w * persistent,
            "reduce_bucket": w * setup.reduce_bucket_size if mc.facts.n_trainable else 0}


def run_ranks(script: str, world: int, args: list[str], label: str, cpu: bool = False) -> None:
    """``torch.distributed.run`` ``world`` worker processes of ``script args`` (the CPU accelerator when
    ``cpu`` or without CUDA, one OpenMP thread per rank); their output is shown only if they fail.
    Shared by memory_scale.py. ``MASTER_PORT`` overrides the pid-derived port."""
    import torch

    env = dict(os.environ)
    if cpu or not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu" if cpu else env.get("DS_ACCELERATOR", "cpu")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    port = int(os.environ.get("MASTER_PORT", 29500 + world + (os.getpid() % 200) * 3))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
           str(port), script, "--worker", *args]
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{label}: worker failed (exit {proc.returncode})")
    print(f"[{label}] {time.time() - t:.0f}s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--scale" in argv:     # the ~1B whole-process check lives in memory_scale.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import memory_scale

        return memory_scale.main([a for a in argv if a != "--scale"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="tiny-bert")
    ap.add_argument("--methods", default="ft,pt2,lester,head")
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--offload_optimizer", action="store_true")
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--seq_len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--reduce_bucket_size", type=float, default=2e5)
    ap.add_argument("--prefetch_bucket_size", type=float, default=5e7)
    ap.add_argument("--persistence_threshold", type=float, default=1e4)
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--csv", default=None, metavar="PATH")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    worlds = [int(w) for w in args.worlds.split(",")]
    methods = args.methods.split(",")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            prefix = os.path.join(tmp, f"w{world}")
            run_ranks(__file__, world, ["--worker_out", prefix, *[a for a in sys.argv[1:] if a != "--worker"]],
                      f"world {world}")
            ranks = [json.load(open(f"{prefix}.rank{r}.json")) for r in range(world)]
            for i, method in enumerate(methods):
                est = estimate_case(args, method, world)
                for r in range(world):
                    meas = ranks[r][i]["measured"]
                    m_states = sum(meas[k] for k in COMPONENTS)
                    rec = {"backbone": args.backbone, "dtype": args.dtype, "method": method, "world": world,
                           "rank": r, "estimated_bytes": est["model_states"], "measured_bytes": m_states,
                           "rel_err": (est["model_states"] - m_states) / m_states,
                           "estimated": {k: est[k] for k in (*COMPONENTS, "persistent_params", "reduce_bucket")},
                           "measured": meas}
                    rec["functional_linear"] = ranks[r][i]["functional_linear"]
                    if "cuda_max_memory_allocated" in ranks[r][i]:
                        rec["cuda_max_memory_allocated"] = ranks[r][i]["cuda_max_memory_allocated"]
                    records.append(rec)

    print(f"ZeRO-3 model states per rank, {args.backbone}, {args.dtype}"
          f"{', optimizer offload' if args.offload_optimizer else ''} (bytes; est = megaprompt-memory)")
    print(f"{'method':7s} {'world':>5s} {'rank':>4s} {'estimated':>11s} {'measured':>11s} {'rel_err':>8s}   "
          f"{'frozen':>9s} {'train':>8s} {'grad':>8s} {'master':>8s} {'optim':>8s} | {'persist e/m':>17s}")
    ok = True
    for r in records:
        m = r["measured"]
        ok &= abs(r["rel_err"]) <= TARGET
        print(f"{r['method']:7s} {r['world']:>5d} {r['rank']:>4d} {r['estimated_bytes']:>11,d} "
              f"{r['measured_bytes']:>11,d} {r['rel_err'] * 100:>7.2f}%   {m['frozen_weights']:>9,d} "
              f"{m['trainable_weights']:>8,d} {m['gradients']:>8,d} {m['master_weights']:>8,d} "
              f"{m['optimizer_states']:>8,d} | {r['estimated']['persistent_params']:>8,d}/"
              f"{m['persistent_params']:<8,d}")
    print(f"all within {TARGET:.0%}: {'yes' if ok else 'NO'}; F.linear during training: "
          f"{sorted({r['functional_linear'] for r in records})}")
    if any("cuda_max_memory_allocated" in r for r in records):
        for r in records:
            print(f"{r['method']:7s} world {r['world']} rank {r['rank']}: torch.cuda.max_memory_allocated "
                  f"{r['cuda_max_memory_allocated']:,d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["backbone", "dtype", "method", "world", "rank", "estimated_bytes", "measured_bytes",
                         "rel_err"])
            for r in records:
                wr.writerow([r[k] for k in ("backbone", "dtype", "method", "world", "rank", "estimated_bytes",
                                            "measured_bytes", "rel_err")])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
