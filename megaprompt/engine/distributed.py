"""Process-group setup for every way megaprompt is launched, and a rank-0 logger.

Launchers and what they give us:
  deepspeed / torchrun: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
  srun (one task per GPU): SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS (+ MASTER_ADDR/PORT from jobs/)
  plain ``python``: nothing - we become a world of one on a free loopback port.
Backend: NCCL on CUDA, gloo on the DeepSpeed CPU accelerator.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import warnings

import torch
import torch.distributed as dist

log = logging.getLogger("megaprompt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_env() -> None:
    """Fill RANK/WORLD_SIZE/... from Slurm or a single process, before DeepSpeed reads them."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Idempotent."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    setup_env()
    # torch.distributed deprecation notices fire on every ZeRO step from inside DeepSpeed: not actionable here.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated.*")
    acc = get_accelerator()
    on_cpu = acc.device_name() == "cpu"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if on_cpu else acc.communication_backend_name(),
                                   verbose=False)
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu") if on_cpu else torch.device(acc.device_name(), local)
    if not on_cpu:
        acc.set_device(local)
    return dist.get_rank(), dist.get_world_size(), device


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


_saved_logging: dict[str, object] = {}


def setup_logging(log_file: str | None = None) -> None:
    """INFO on rank 0 (stderr and ``log_file``), warnings only elsewhere. ``teardown_logging`` undoes it."""
    import transformers

    teardown_logging()
    _saved_logging.update(level=log.level, ds=logging.getLogger("DeepSpeed").level,
                          hf=transformers.utils.logging.get_verbosity())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO if is_rank0() else logging.WARNING)
    log.propagate = True   # keep records visible to root handlers (pytest caplog, user logging setups)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and is_rank0():
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    _saved_logging["handlers"] = handlers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)   # DeepSpeed is chatty at INFO on every rank


def teardown_logging() -> None:
    """Close the handlers ``setup_logging`` added and restore the levels it changed (in-process reruns)."""
    if not _saved_logging:
        return
    import transformers

    for h in _saved_logging.pop("handlers", []):
        log.removeHandler(h)
        h.close()
    log.setLevel(_saved_logging.pop("level"))
    logging.getLogger("DeepSpeed").setLevel(_saved_logging.pop("ds"))
    transformers.utils.logging.set_verbosity(_saved_logging.pop("hf"))
    transformers.utils.logging.enable_progress_bar()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def collective_device() -> torch.device:
    """Where small collectives must live: NCCL groups have no CPU backend, gloo has only one."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce_flag(flag: bool, op: dist.ReduceOp) -> bool:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=op)
    return bool(t.item())


def all_true(flag: bool) -> bool:
    """True on every rank iff it is True on every rank (every rank must call it)."""
    return _reduce_flag(flag, dist.ReduceOp.MIN)


def any_true(flag: bool) -> bool:
    """True on every rank iff it is True on some rank (every rank must call it)."""
    return _reduce_flag(flag, dist.ReduceOp.MAX)


def destroy() -> None:
    """Without destroy_process_group a rank can abort at interpreter shutdown.

    DeepSpeed caches process-group handles in ``deepspeed.utils.groups``; they are reset too, so one process
    can run several trainings in a row (tests, notebooks) without reusing destroyed groups.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    teardown_logging()
    from deepspeed.utils import groups
    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper() and name.endswith(("GROUP", "GROUP_RANKS")):
            setattr(groups, name, {} if isinstance(value, dict) else None)
    groups.mpu = None
