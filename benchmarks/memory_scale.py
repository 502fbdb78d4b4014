#!/usr/bin/env python
"""``memory_check.py --scale``: the memory estimator against a ~1B-parameter model on 2 CPU ranks.

A randomly initialised llama-shaped config (default hidden 2048, 16 layers, 16 heads, intermediate 5632,
vocab 32000: 0.89B parameters) is trained for ``--steps`` steps at batch 1 x 256 with DeepSpeed ZeRO-3 on
2 CPU ranks (gloo), fp32, for pt2 and ft, each method in its own ``torchrun`` job (``ru_maxrss`` only grows
over a process's life). The backbone is built by ``AutoModel.from_config`` with ``HfDeepSpeedConfig``
alive, so ``zero.Init`` partitions it at construction - the path megaprompt's engine takes; the DeepSpeed
settings are ``ds_configs/zero3.json``'s (``reduce_bucket_size`` "auto" resolved as the engine does).

Each rank caps glibc's heap retention as training ranks do (``engine.distributed.cap_heap_retention``, called
by ``setup_env``) and records its resident set (``psutil`` RSS now, ``ru_maxrss`` peak so far) after the imports, after
the model is built, after ``deepspeed.initialize`` and after every step. The measured figure is the
per-rank peak RSS over the whole job; the estimate is ``megaprompt-memory --device cpu`` for the same setup
(``megaprompt.costs.memory``: on CPU the "device" memory is the process's RSS, so it includes the
python/torch/deepspeed baseline and every buffer DeepSpeed allocates in host memory).

Target: within 15% for both methods (``rel_err = (estimated - measured) / measured``); exit 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from memory_check import run_ranks  # noqa: E402  (benchmarks/ is on sys.path: run as a script or via --scale)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.15
GiB = 2 ** 30


def llama_config(args: argparse.Namespace) -> dict:
    return {"model_type": "llama", "hidden_size": args.hidden, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads or args.heads,
            "intermediate_size": args.intermediate, "vocab_size": args.vocab,
            "max_position_embeddings": max(2048, args.seq_len), "pad_token_id": 0, "tie_word_embeddings": False}


def ds_config(trainable: int, overrides: dict | None = None) -> dict:
    """ds_configs/zero3.json with fp32 and the engine's resolution of ``reduce_bucket_size: "auto"``."""
    zero = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())["zero_optimization"]
    zero.update(overrides or {})
    if zero.get("reduce_bucket_size") == "auto":
        zero["reduce_bucket_size"] = int(min(5e8, max(trainable, 1e6)))     # engine/build.py
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
            "zero_optimization": zero, "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9,
            "wall_clock_breakdown": False}


def _rss() -> dict[str, int]:
    import psutil

    return {"rss": psutil.Process().memory_info().rss,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}   # Linux: KiB


def worker(args: argparse.Namespace) -> int:
    phases = {"imports": None}
    import deepspeed
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    from megaprompt.engine.distributed import cap_heap_retention   # what setup_env() does in training

    cap_heap_retention()
    from megaprompt.costs.params import build_prompted, make_prompt_config, resolve_backbone
    from megaprompt.accounting import count_parameters

    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    phases["imports"] = _rss()
    bb = resolve_backbone(args.config_path)
    pcfg = make_prompt_config(args.method, args.prompt_len)
    trainable = count_parameters(build_prompted(bb, pcfg, "cls", 2)).trainable      # meta: no memory
    cfg = ds_config(trainable, args.zero)
    dschf = HfDeepSpeedConfig(cfg)   # alive while the backbone is built: zero.Init partitions it
    torch.manual_seed(0)
    t0 = time.time()
    model = build_prompted(bb, pcfg, "cls", 2, device="cpu")
    phases["built"] = _rss()
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    del dschf
    phases["initialized"] = _rss()
    t_build = time.time() - t0
    g = torch.Generator().manual_seed(1 + rank)
    step_s = []
    for i in range(args.steps):
        t = time.time()
        ids = torch.randint(5, args.vocab, (1, args.seq_len), generator=g)
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 2, (1,), generator=g))
        engine.backward(out["loss"])
        engine.step()
        step_s.append(time.time() - t)
        phases[f"step{i + 1}"] = _rss()
    rec = {"method": args.method, "rank": rank, "phases": phases, "build_s": t_build, "step_s": step_s,
           "trainable": trainable, "reduce_bucket_size": cfg["zero_optimization"]["reduce_bucket_size"]}
    with open(f"{args.worker_out}.{args.method}.rank{rank}.json", "w") as f:
        json.dump(rec, f)
    return 0


def estimate(args: argparse.Namespace, method: str) -> dict:
    """``megaprompt-memory --device cpu`` for this run's exact setup (its DeepSpeed settings included)."""
    from megaprompt.accounting import count_parameters
    from megaprompt.costs.memory import CPU_BASELINE_GIB, GiB, Setup, estimate_for, prepare
    from megaprompt.costs.params import build_prompted, make_prompt_config, resolve_backbone

    trainable = count_parameters(build_prompted(resolve_backbone(args.config_path),
                                                make_prompt_config(method, args.prompt_len))).trainable
    z = ds_config(trainable, args.zero)["zero_optimization"]
    setup = Setup(stage=3, nodes=1, gpus_per_node=2, dtype="fp32", checkpointing=args.checkpointing, batch_size=1,
                  seq_len=args.seq_len, reduce_bucket_size=int(z["reduce_bucket_size"]),
                  prefetch_bucket_size=int(z["stage3_prefetch_bucket_size"]),
                  persistence_threshold=int(z["stage3_param_persistence_threshold"]),
                  contiguous_gradients=bool(z["contiguous_gradients"]), overlap_comm=bool(z["overlap_comm"]),
                  memory_efficient_linear=bool(z.get("memory_efficient_linear", True)), device="cpu",
                  baseline_bytes=int(CPU_BASELINE_GIB * GiB))
    est = estimate_for(prepare(args.config_path, method, setup, prompt_len=args.prompt_len), setup)
    return {"total": est.gpu_total, "components": dict(est.gpu)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="pt2,ft")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv_heads", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq_len", type=int, default=256)
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every layer")
    ap.add_argument("--zero", type=json.loads, default=None, metavar="JSON",
                    help="zero_optimization overrides, e.g. '{\"stage3_max_reuse_distance\": 0}'")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config_path", default=None, help=argparse.SUPPRESS)
    return ap


SHAPE_FLAGS = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "seq_len", "prompt_len", "steps")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    args.passthrough = [x for k in SHAPE_FLAGS if getattr(args, k) is not None
                        for x in (f"--{k}", str(getattr(args, k)))]
    if args.zero:
        args.passthrough += ["--zero", json.dumps(args.zero)]
    if args.checkpointing:
        args.passthrough.append("--checkpointing")
    if args.worker:
        return worker(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args.config_path = os.path.join(tmp, "config.json")
        Path(args.config_path).write_text(json.dumps(llama_config(args)))
        for method in args.methods.split(","):
            prefix = os.path.join(tmp, "out")
            run_ranks(str(Path(__file__).resolve()), 2, ["--worker_out", prefix, "--method", method,
                                                        "--config_path", args.config_path, *args.passthrough],
                      method, cpu=True)
            ranks = [json.load(open(f"{prefix}.{method}.rank{r}.json")) for r in range(2)]
            est = estimate(args, method)
            for rec in ranks:
                measured = max(p["peak"] for p in rec["phases"].values())
                rows.append({**rec, "measured_peak_rss": measured, "estimated": est,
                             "rel_err": (est["total"] - measured) / measured})
    print(f"ZeRO-3, 2 CPU ranks, fp32, batch 1 x {args.seq_len}: per-rank peak RSS (GiB) vs megaprompt-memory "
          f"--device cpu")
    print(f"{'method':6s} {'rank':>4s} {'estimated':>9s} {'measured':>9s} {'rel_err':>8s}   phases (peak so far)")
    ok = True
    for r in rows:
        ok &= abs(r["rel_err"]) <= TARGET
        ph = " ".join(f"{k}={v['peak'] / GiB:.2f}" for k, v in r["phases"].items())
        print(f"{r['method']:6s} {r['rank']:>4d} {r['estimated']['total'] / GiB:>9.2f} "
              f"{r['measured_peak_rss'] / GiB:>9.2f} {r['rel_err'] * 100:>7.1f}%   {ph}")
    for method in args.methods.split(","):
        est = next(r["estimated"] for r in rows if r["method"] == method)
        print(f"{method} estimate: " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in est["components"].items()))
    print(f"all within {TARGET:.0%}: {'yes' if ok else 'NO'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
