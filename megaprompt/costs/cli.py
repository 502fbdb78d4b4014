"""``megaprompt-memory``: the command line of the training-memory estimate (``megaprompt.costs.memory``).

Reads the shipped DeepSpeed config (stage, offload, buckets) unless told otherwise, prints the per-GPU and
per-node CPU estimate of each method, and says the smallest GPU count that fits a given GPU size.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

from megaprompt.cli import ArgumentParser
from megaprompt.costs.memory import (COMPONENTS, CPU_BASELINE_GIB, DTYPE_BYTES, METHOD_NAMES, GiB, MethodCosts,
                                     Setup, estimate_for, min_gpus, prepare)
from megaprompt.costs.params import CostInputError, human
from megaprompt.prompts.config import METHODS, REPARAMS

def _gib(b: float) -> str:
    return f"{b / GiB:.2f}"


# The config the README's launch command trains with, so the estimate describes the run a user starts. It lives
# beside the package in a source checkout; an installed wheel has no ds_configs/ and falls back to DeepSpeed's
# defaults, which the output says (setup.ds_config).
SHIPPED_DS_CONFIG = str(Path(__file__).resolve().parents[2] / "ds_configs" / "zero3.json")


def _load_ds_config(path: str, setup: Setup) -> Setup:
    """Take stage, offload and bucket sizes from a DeepSpeed JSON config ("auto" values keep our defaults)."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as err:
        raise CostInputError(f"--ds_config {path}: {err}") from None
    z = cfg.get("zero_optimization", {})

    def num(key: str, default: Any) -> Any:
        v = z.get(key, default)
        return default if v == "auto" else v

    def device(key: str) -> bool:
        return str((z.get(key) or {}).get("device", "none")).lower() not in ("none", "")

    return replace(setup, stage=int(num("stage", setup.stage)),
                   offload_optimizer=device("offload_optimizer"), offload_param=device("offload_param"),
                   reduce_bucket_size=int(float(num("reduce_bucket_size", setup.reduce_bucket_size))),
                   prefetch_bucket_size=int(float(num("stage3_prefetch_bucket_size", setup.prefetch_bucket_size))),
                   persistence_threshold=int(float(num("stage3_param_persistence_threshold",
                                                       setup.persistence_threshold))),
                   contiguous_gradients=bool(num("contiguous_gradients", setup.contiguous_gradients)),
                   overlap_comm=bool(num("overlap_comm", setup.overlap_comm)),
                   sub_group_size=int(float(num("sub_group_size", setup.sub_group_size))),
                   memory_efficient_linear=bool(num("memory_efficient_linear", setup.memory_efficient_linear)))


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="megaprompt-memory",
        description="Estimated per-GPU and per-node CPU training memory: full fine-tuning vs P-Tuning v2 under "
                    "DeepSpeed ZeRO (formulas and sources: megaprompt/costs/memory.py, README.md (Costs section)).")
    ap.add_argument("--backbone", default="glm-10b", help="preset, tiny config, config.json or model directory")
    ap.add_argument("--methods", default="ft,pt2", help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--reparam", default="none", choices=REPARAMS)
    ap.add_argument("--mlp_hidden", type=int, default=512)
    ap.add_argument("--prompt_layers", default="all")
    ap.add_argument("--head", default="cls")
    ap.add_argument("--num_labels", type=int, default=2)
    ap.add_argument("--ds_config", default=SHIPPED_DS_CONFIG, metavar="PATH|none",
                    help="read stage/offload/bucket sizes and memory_efficient_linear from a DeepSpeed JSON "
                         "(default: the shipped ds_configs/zero3.json, which training uses; 'none': DeepSpeed's "
                         "own defaults)")
    ap.add_argument("--stage", type=int, default=None, choices=(0, 1, 2, 3), help="ZeRO stage (default 3)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus_per_node", type=int, default=8)
    ap.add_argument("--dtype", default="bf16", choices=tuple(DTYPE_BYTES))
    ap.add_argument("--offload_optimizer", action="store_true")
    ap.add_argument("--offload_param", action="store_true")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every layer")
    ap.add_argument("--batch_size", type=int, default=8, help="micro-batch per GPU")
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--reduce_bucket_size", type=float, default=None, help="elements (DeepSpeed default 5e8)")
    ap.add_argument("--persistence_threshold", type=float, default=None,
                    help="stage3_param_persistence_threshold (default 1e5)")
    ap.add_argument("--no_memory_efficient_linear", action="store_true",
                    help="ZeRO-3 with memory_efficient_linear=false: frozen linears keep no input")
    ap.add_argument("--eager_attention", action="store_true", help="attention probabilities are saved (no SDPA)")
    ap.add_argument("--device", default="gpu", choices=("gpu", "cpu"),
                    help="cpu: ranks on CPU (gloo); a rank's figure is its resident set, baseline included")
    ap.add_argument("--baseline_gb", type=float, default=None,
                    help=f"RSS of a training process before any model (default {CPU_BASELINE_GIB} GiB on "
                         f"--device cpu, 0 on gpu)")
    ap.add_argument("--gpu_mem_gb", type=float, default=80.0, help="GPU memory for the fit check (GiB)")
    ap.add_argument("--reserve_gb", type=float, default=0.0, help="GiB per GPU kept free (context, fragmentation)")
    ap.add_argument("--cpu_mem_gb", type=float, default=None, help="host memory per node for the fit check (GiB)")
    ap.add_argument("--max_gpus", type=int, default=4096)
    ap.add_argument("--plot", default=None, metavar="PATH",
                    help="PNG of memory per GPU vs backbone size (presets 350M-70B), FT and PT2 at ZeRO-2/3")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", help="JSON (stdout or PATH)")
    fmt.add_argument("--csv", nargs="?", const="-", default=None, metavar="PATH", help="CSV (stdout or PATH)")
    return ap


def _setup_from_args(args: argparse.Namespace) -> Setup:
    s = Setup()
    path = args.ds_config
    if path == SHIPPED_DS_CONFIG and not Path(path).is_file():
        path = None                               # installed without the source tree: DeepSpeed's defaults
    if path and path.lower() != "none":
        s = replace(_load_ds_config(path, s), ds_config=path)
    kw: dict[str, Any] = dict(nodes=args.nodes, gpus_per_node=args.gpus_per_node, dtype=args.dtype,
                              checkpointing=args.checkpointing, batch_size=args.batch_size, seq_len=args.seq_len,
                              fused_attention=not args.eager_attention, device=args.device)
    base = args.baseline_gb if args.baseline_gb is not None else (CPU_BASELINE_GIB if args.device == "cpu" else 0)
    if base < 0:
        raise CostInputError(f"--baseline_gb {base:g}: must be >= 0")
    kw["baseline_bytes"] = int(base * GiB)
    if args.stage is not None:
        kw["stage"] = args.stage
    if args.offload_optimizer:
        kw["offload_optimizer"] = True
    if args.offload_param:
        kw["offload_param"] = True
    if args.reduce_bucket_size is not None:
        kw["reduce_bucket_size"] = int(args.reduce_bucket_size)
    if args.persistence_threshold is not None:
        kw["persistence_threshold"] = int(args.persistence_threshold)
    if args.no_memory_efficient_linear:
        kw["memory_efficient_linear"] = False
    s = replace(s, **kw)
    s.validate()
    return s


def _write(text: str, dest: str) -> None:
    if dest == "-":
        sys.stdout.write(text)
    else:
        with open(dest, "w") as f:
            f.write(text)


def _shown_path(path: str) -> str:
    """The shipped config as the README names it; any other path as given."""
    return "ds_configs/zero3.json" if path == SHIPPED_DS_CONFIG else path


def _fit_sentence(name: str, mc: MethodCosts, n: int | None, setup: Setup, gpu_gb: float, size: str) -> str:
    off = []
    if setup.offload_optimizer:
        off.append("optimizer")
    if setup.offload_param:
        off.append("parameter")
    how = f"with {' and '.join(off)} offload" if off else "without offload"
    if n is None:
        return (f"{METHOD_NAMES.get(mc.method, mc.method)} of {name} ({size}) does not fit on any number of {gpu_gb:g} GiB GPUs "
                f"at ZeRO-{setup.stage} {how}")
    return (f"{METHOD_NAMES.get(mc.method, mc.method)} of {name} ({size}) needs {n} x {gpu_gb:g} GiB GPU{'s' if n > 1 else ''} "
            f"at ZeRO-{setup.stage} {how} (micro-batch {setup.batch_size} x {setup.seq_len} tokens)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        ap.error(f"--methods {args.methods!r}: expected a comma list of {', '.join(METHODS)}")
    if args.gpu_mem_gb <= args.reserve_gb:
        ap.error(f"--gpu_mem_gb {args.gpu_mem_gb:g} must exceed --reserve_gb {args.reserve_gb:g}")
    if args.max_gpus < 1:
        ap.error("--max_gpus must be >= 1")
    try:
        setup = _setup_from_args(args)
        if args.plot:
            from megaprompt.costs.plot import plot_memory_vs_size
            plot_memory_vs_size(args.plot, setup, gpu_gb=args.gpu_mem_gb, prompt_len=args.prompt_len)
            print(f"wrote {args.plot}")
            return 0
        costs = [prepare(args.backbone, m, setup, args.prompt_len, args.reparam, args.mlp_hidden,
                         args.prompt_layers, args.head, args.num_labels) for m in methods]
        ests = [estimate_for(mc, setup) for mc in costs]
        budget = (args.gpu_mem_gb - args.reserve_gb) * GiB
        cpu_budget = args.cpu_mem_gb * GiB if args.cpu_mem_gb else None
        fits = [min_gpus(mc, setup, budget, args.max_gpus, cpu_budget) for mc in costs]
    except CostInputError as err:
        ap.error(str(err))

    if args.json:
        out = {"backbone": args.backbone, "setup": asdict(setup), "gpu_mem_gb": args.gpu_mem_gb,
               "methods": [{**e.to_dict(), "min_gpus": f} for e, f in zip(ests, fits)]}
        _write(json.dumps(out, indent=2) + "\n", args.json)
        return 0
    if args.csv:
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["backbone", "method", "world", "where", "component", "bytes"])
        for e in ests:
            for where, d in (("gpu", e.gpu), ("cpu_per_gpu", e.cpu)):
                for k, v in d.items():
                    wr.writerow([args.backbone, e.method, e.world, where, k, v])
            wr.writerow([args.backbone, e.method, e.world, "gpu", "total", e.gpu_total])
            wr.writerow([args.backbone, e.method, e.world, "cpu_per_node", "total", e.cpu_per_node])
        _write(buf.getvalue(), args.csv)
        return 0

    s = setup
    print(f"{args.backbone}: {human(costs[0].facts.n_frozen + costs[0].facts.n_trainable)} parameters | ZeRO-{s.stage}"
          f", {s.nodes} node(s) x {s.gpus_per_node} GPU(s), {s.dtype}, micro-batch {s.batch_size} x {s.seq_len}"
          f"{', checkpointing' if s.checkpointing else ''}{', offload optimizer' if s.offload_optimizer else ''}"
          f"{', offload params' if s.offload_param else ''}; prompt_len {args.prompt_len}; "
          f"DeepSpeed settings from {_shown_path(s.ds_config) if s.ds_config else 'DeepSpeed defaults'}")
    unit = "GiB per rank (RSS)" if s.device == "cpu" else "GiB per GPU"
    head = f"{unit:24s}" + "".join(f"{m:>14s}" for m in methods)
    print(head)
    print(f"{'trainable params':24s}" + "".join(f"{human(e.params_trainable):>14s}" for e in ests))
    for k in COMPONENTS:
        print(f"  {k:22s}" + "".join(f"{_gib(e.gpu.get(k, 0)):>14s}" for e in ests))
    print(f"{'GPU total':24s}" + "".join(f"{_gib(e.gpu_total):>14s}" for e in ests))
    print(f"{'CPU per node':24s}" + "".join(f"{_gib(e.cpu_per_node):>14s}" for e in ests))
    print(f"{'min GPUs (' + format(args.gpu_mem_gb, 'g') + ' GiB)':24s}"
          + "".join(f"{(str(f) if f else '-'):>14s}" for f in fits))
    if "ft" in methods:
        ft = ests[methods.index("ft")]
        for m, e in zip(methods, ests):
            if m != "ft":
                print(f"saving {m} vs ft: {ft.gpu_total / e.gpu_total:.2f}x GPU memory per GPU, "
                      f"{ft.model_states / max(e.model_states, 1):.2f}x model states")
    for mc, f in zip(costs, fits):
        print(_fit_sentence(args.backbone, mc, f, s, args.gpu_mem_gb, human(costs[0].facts.n_total)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
