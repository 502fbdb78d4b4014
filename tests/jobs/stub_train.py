"""A stand-in for megaprompt/train.py in launcher tests: records what it was given and, with
``--steps N``, runs a step loop on 2 gloo ranks that honours preemption exactly like the real loop must
(``PreemptionHandler.should_stop`` at every step boundary, checkpoint, rank 0 requeues, ``--resume auto``).

Writes into ``--output_dir``: ``rank<R>.json`` (argv + distributed env), ``steps_rank<R>.log`` (one line
``restart=<n> step=<k>`` per step), ``checkpoints/rank<R>.json`` and, on completion, ``metrics.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path


def _load_handler() -> type:
    """megaprompt/engine/preemption.py loaded by path: the same code the trainer uses, without importing
    the engine package (deepspeed, transformers), which would make every stub rank seconds slower."""
    path = Path(__file__).resolve().parents[2] / "megaprompt" / "engine" / "preemption.py"
    spec = importlib.util.spec_from_file_location("megaprompt_preemption_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PreemptionHandler


PreemptionHandler = _load_handler()

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
            "OMP_NUM_THREADS")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", required=True)
    p.add_argument("--resume", default="none")
    p.add_argument("--max_requeues", type=int, default=3)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--step_seconds", type=float, default=0.2)
    p.add_argument("--install_after", type=float, default=0.0,
                   help="first attempt only: wait this long before installing the signal handlers "
                        "(a signal in that window kills the rank, as during a real model load)")
    args, _ = p.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    record = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in ENV_KEYS}}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if args.install_after and restart == "0":
        time.sleep(args.install_after)
    handler = PreemptionHandler(max_requeues=args.max_requeues)
    handler.install()
    step = 0
    if args.steps:
        import torch.distributed as dist

        if world > 1:
            dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
        ckpt = out / "checkpoints" / f"rank{rank}.json"
        if args.resume == "auto" and ckpt.is_file():
            step = json.loads(ckpt.read_text())["step"]
            print(f"rank {rank}: resumed from step {step}", flush=True)
        with open(out / f"steps_rank{rank}.log", "a") as f:
            while step < args.steps:
                time.sleep(args.step_seconds)
                step += 1
                f.write(f"restart={restart} step={step}\n")
                f.flush()
                if handler.should_stop():
                    ckpt.parent.mkdir(exist_ok=True)
                    ckpt.write_text(json.dumps({"step": step}))
                    if world > 1:
                        dist.barrier()
                    print(f"rank {rank}: stopped at step {step}, checkpoint saved", flush=True)
                    if rank == 0:
                        handler.requeue()
                    return 0
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps({"task": "stub", "steps": step,
                                                      "final": {"accuracy": 50.0}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
