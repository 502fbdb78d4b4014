#!/usr/bin/env python
"""P-Tuning v2 at GPU scale: a 7B-class and a 1B-class llama-shaped model on one NVIDIA GPU (< 10 min).

Cases (randomly initialised configs, DeepSpeed ZeRO-3 in a world of one, bf16, activation checkpointing,
batch 1 x ``--seq`` (2048) random tokens, torch AdamW over the trainable parameters only):

* ``7b-pt2``  - hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000 (6.7B): tokens/s, model
  FLOPs utilisation, peak allocated memory vs ``megaprompt-memory`` for the same setup, and which attention
  kernels ran (``megaprompt.backbones.kernels.KERNEL_CALLS``);
* ``7b-stock`` - the same model with transformers' stock SDPA attention (flash on GPU) and no prefix: a
  one-vector input prompt (``lester``, prompt_len 1) keeps the backward through every layer, so the step
  does the same work minus the prefix; reported as the pt2 / stock step-time ratio;
* ``1b-pt2`` and ``1b-ft`` - hidden 2048, 16 layers, intermediate 5632: the ft / pt2 step-time ratio and
  the peak memory of each (vs the estimate).

FLOP count (stated, PaLM appendix B convention; checkpointing's recomputed forward is *not* counted, so
this is MFU, not hardware FLOPs utilisation). Per token, with N the non-embedding parameters (embedding
lookups cost no FLOPs), T the keys per query (seq + prompt_len) and d_attn = heads x head_dim:

* forward: 2N + 4 n_layers d_attn T;
* ft step: 6N + 12 n_layers d_attn T (backward = input gradients 2N + weight gradients 2N);
* pt2 step: 4N + 12 n_layers d_attn T - 2 N_qkv(layer 0) - 2 d_attn T: frozen weights get no weight
  gradients, and in the first layer neither the q/k/v projections' input nor Q needs a gradient (the
  frozen embeddings need none); otherwise attention's backward is unchanged (the prefix needs dK, dV);
* the stock baseline (``lester``, one input vector): 4N + 12 n_layers d_attn T over seq + 1 positions.

``--dry-run`` (CPU, no GPU needed; what tests/benchmarks run): builds a tiny llama, counts the FLOPs of one
real pt2, ft and lester step with ``torch.utils.flop_counter.FlopCounterMode`` (SDPA's math backend, so
attention's matmuls are counted) and checks them against the formulas above (within 0.5%), then runs the
benchmark's own step loop for 2 steps through DeepSpeed ZeRO-3 on CPU.

Usage::

    python benchmarks/gpu_scale.py [--json PATH] [--cases 7b-pt2,7b-stock,1b-pt2,1b-ft] [--steps 6]
    python benchmarks/gpu_scale.py --dry-run [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SHAPES = {
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
               intermediate_size=5632),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, head_dim=16),
}
CASES = ("7b-pt2", "7b-stock", "1b-pt2", "1b-ft")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "GH200": 989.0}
PROMPT_LEN = 16


def llama_config(shape: str, seq: int) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": max(4096, seq + PROMPT_LEN),
            "pad_token_id": 0, "tie_word_embeddings": False, **SHAPES[shape]}


# ---- FLOP accounting ---------------------------------------------------------------------------------------
def flops_per_token(cfg: dict[str, Any], method: str, seq: int, prompt_len: int) -> dict[str, float]:
    """Model FLOPs per real token of one training step (module docstring); ``method``: pt2, ft or lester."""
    h, n_layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    qkv = h * heads * hd + 2 * h * kv * hd
    per_layer = qkv + heads * hd * h + 3 * h * inter          # q,k,v,o and gate/up/down (norms: no matmul)
    n = n_layers * per_layer
    positions = seq + (prompt_len if method == "lester" else 0)      # an input prompt takes positions
    keys = seq + (prompt_len if method != "ft" else 0)
    attn_fwd = 4 * n_layers * heads * hd * keys
    if method == "ft":
        total = 6 * n + 3 * attn_fwd
    elif method == "lester":       # the gradient reaches the input: every layer computes input gradients
        total = 4 * n + 3 * attn_fwd
    else:   # pt2: frozen weights get no weight gradient; layer 0's q/k/v projections and dQ need no gradient
        total = 4 * n + 3 * attn_fwd - 2 * qkv - 2 * heads * hd * keys
    scale = positions / seq
    return {"non_embedding_params": n, "forward": (2 * n + attn_fwd) * scale, "step": total * scale,
            "keys": keys}


def counted_flops(cfg: dict[str, Any], method: str, seq: int, prompt_len: int) -> float:
    """FLOPs per token of one real step of the tiny model on CPU, counted by FlopCounterMode."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModel

    from megaprompt.model import build_model
    from megaprompt.prompts import PromptConfig

    kw = dict(cfg)
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model(kw.pop("model_type"), **kw))
    model = build_model(backbone, PromptConfig(method=method, prompt_len=prompt_len), "cls", 2)
    ids = torch.randint(5, 1000, (1, seq))
    # the math backend decomposes attention into the bmm's FlopCounterMode counts (CPU's fused one: none)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids), labels=torch.tensor([1]))["loss"].backward()
    head = 2 * 3 * cfg["hidden_size"] * 2 / seq       # the cls head's one-token linear, fwd + bwd
    return counter.get_total_flops() / seq - head


# ---- one case on the GPU (or CPU for --dry-run) -------------------------------------------------------------
def ds_config(stage_cfg_bf16: bool, trainable: int) -> dict[str, Any]:
    zero = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())["zero_optimization"]
    zero["reduce_bucket_size"] = int(min(5e8, max(trainable, 1e6)))        # as engine/build.py resolves "auto"
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
           "zero_optimization": zero, "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
    if stage_cfg_bf16:
        cfg["bf16"] = {"enabled": True}
    return cfg


def run_case(name: str, args: argparse.Namespace, device: torch.device, config_dir: str) -> dict[str, Any]:
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from megaprompt.accounting import count_parameters
    from megaprompt.backbones.kernels import KERNEL_CALLS
    from megaprompt.costs.memory import Setup, estimate_for, prepare
    from megaprompt.costs.params import build_prompted, make_prompt_config, resolve_backbone

    shape, method = name.split("-")
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    cfg = llama_config(shape, args.seq)
    path = os.path.join(config_dir, f"{shape}.json")
    Path(path).write_text(json.dumps(cfg))
    m = "lester" if method == "stock" else method
    plen = 1 if method == "stock" else PROMPT_LEN
    pcfg = make_prompt_config(m, plen)
    bb = resolve_backbone(path)
    trainable = count_parameters(build_prompted(bb, pcfg)).trainable
    ds = ds_config(bf16, trainable)
    keep = HfDeepSpeedConfig(ds)     # alive while the backbone is built: zero.Init partitions it
    torch.manual_seed(0)
    t0 = time.time()
    model = build_prompted(bb, pcfg, "cls", 2, device=device)
    for p in model.parameters():      # prompt and head are built outside zero.Init, in fp32
        if not hasattr(p, "ds_id"):
            p.data = p.data.to(dtype)
    model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-5), config=ds)
    del keep
    build_s = time.time() - t0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(1)
    calls_before = KERNEL_CALLS.copy()
    times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(5, 32000, (1, args.seq), generator=g).to(device)
        sync()
        t = time.time()
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.ones(1, dtype=torch.long,
                                                                                             device=device))
        engine.backward(out["loss"])
        engine.step()
        sync()
        if i >= args.warmup:
            times.append(time.time() - t)
    step_s = statistics.median(times)
    fl = flops_per_token(cfg, m, args.seq, plen)
    tokens_s = args.seq / step_s
    rec: dict[str, Any] = {"case": name, "method": m, "prompt_len": plen, "params_total": count_parameters(
        engine.module).total, "trainable": trainable, "seq": args.seq, "build_s": round(build_s, 1),
        "step_s_median": step_s, "step_s": times, "tokens_per_s": tokens_s, "flops_per_token": fl["step"],
        "non_embedding_params": fl["non_embedding_params"],
        "kernel_calls": {k: v - calls_before.get(k, 0) for k, v in KERNEL_CALLS.items()
                         if v != calls_before.get(k, 0)}}
    if device.type == "cuda":
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items()
                                         if k in torch.cuda.get_device_name()), None)
        rec["gpu"] = torch.cuda.get_device_name()
        rec["peak_tflops_bf16"] = peak
        rec["mfu"] = fl["step"] * tokens_s / (peak * 1e12) if peak else None
        rec["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    setup = Setup(stage=3, gpus_per_node=1, dtype="bf16" if bf16 else "fp32", checkpointing=True, batch_size=1,
                  seq_len=args.seq, reduce_bucket_size=ds["zero_optimization"]["reduce_bucket_size"],
                  prefetch_bucket_size=int(ds["zero_optimization"]["stage3_prefetch_bucket_size"]),
                  persistence_threshold=int(ds["zero_optimization"]["stage3_param_persistence_threshold"]),
                  memory_efficient_linear=False)
    rec["estimated_bytes"] = estimate_for(prepare(path, m, setup, prompt_len=plen), setup).gpu_total
    engine.destroy()
    del engine, model, out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def init_world(device: torch.device) -> None:
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "30407")
    if device.type == "cuda":
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def dry_run(args: argparse.Namespace) -> dict[str, Any]:
    """CPU: FLOP formulas vs FlopCounterMode on a tiny llama, then 2 steps of the case loop."""
    cfg = llama_config("tiny", 32)
    checks = []
    for method in ("pt2", "ft", "lester"):
        plen = 1 if method == "lester" else 4
        want = flops_per_token(cfg, method, 32, plen)["step"]
        got = counted_flops(cfg, method, 32, plen)
        checks.append({"method": method, "formula": want, "counted": got, "rel_err": (got - want) / want})
    ok = all(abs(c["rel_err"]) <= 0.005 for c in checks)
    for c in checks:
        print(f"flops/token {c['method']:6s} formula {c['formula']:.4g} counted {c['counted']:.4g} "
              f"({c['rel_err'] * 100:+.2f}%)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = torch.device("cpu")
    init_world(device)
    args.seq, args.steps, args.warmup = 32, 2, 0
    with tempfile.TemporaryDirectory() as tmp:
        rec = run_case("tiny-pt2", args, device, tmp)
    print(f"case loop on CPU: tiny-pt2 {rec['step_s_median']:.3f} s/step, kernels {rec['kernel_calls']}, "
          f"estimate {rec['estimated_bytes'] / 2**20:.1f} MiB")
    return {"dry_run": True, "flop_checks": checks, "flops_ok": ok, "case": rec}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: by name)")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU: tiny model, FLOP accounting check")
    args = ap.parse_args(argv)
    if args.dry_run:
        out = dry_run(args)
        ok = out["flops_ok"]
    else:
        if not torch.cuda.is_available():
            print("gpu_scale.py needs an NVIDIA GPU (use --dry-run on CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        init_world(device)
        recs = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.cases.split(","):
                rec = run_case(name, args, device, tmp)
                recs.append(rec)
                print(f"{name:9s} {rec['step_s_median']:.3f} s/step  {rec['tokens_per_s']:.0f} tok/s  MFU "
                      f"{(rec['mfu'] or 0) * 100:.1f}%  peak {rec['peak_allocated_bytes'] / 2**30:.2f} GiB  "
                      f"(est {rec['estimated_bytes'] / 2**30:.2f})  kernels {rec['kernel_calls']}", flush=True)
        by = {r["case"]: r for r in recs}
        ratios = {}
        if "7b-pt2" in by and "7b-stock" in by:
            ratios["7b_pt2_over_stock"] = by["7b-pt2"]["step_s_median"] / by["7b-stock"]["step_s_median"]
        if "1b-pt2" in by and "1b-ft" in by:
            ratios["1b_ft_over_pt2"] = by["1b-ft"]["step_s_median"] / by["1b-pt2"]["step_s_median"]
        print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
        out = {"cases": recs, "ratios": ratios, "flops_note": flops_per_token.__doc__}
        ok = True
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
