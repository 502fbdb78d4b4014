"""Process-group setup for every way megaprompt is launched, and a rank-0 logger.

Launchers and what they give us:
  deepspeed / torchrun: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
  srun (one task per GPU): SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS (+ MASTER_ADDR/PORT from jobs/)
  plain ``python``: nothing - we become a world of one on a free loopback port.
Backend: NCCL on CUDA, gloo on the DeepSpeed CPU accelerator.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger("megaprompt")
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _extensions_dir() -> str:
    """Where DeepSpeed's JIT ops are built: one directory per environment (torch and DeepSpeed installation).

    torch's default (``~/.cache/torch_extensions/py311_cpu``) is shared by every environment on the machine, and
    a build made by one environment is rebuilt by the next: its build file records the include paths and flags
    of the torch that wrote it, so even two venvs with the same torch version took turns recompiling for about a
    minute on nearly every run. Keyed by the versions (readable) and the installation paths (correct), each
    environment builds once and keeps its build.
    """
    import hashlib

    import deepspeed
    import torch

    where = hashlib.sha1(f"{Path(torch.__file__).parent}|{Path(deepspeed.__file__).parent}".encode()).hexdigest()
    key = f"torch{torch.__version__}-ds{deepspeed.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{where[:8]}"
    return str(Path.home() / ".cache" / "megaprompt" / "torch_extensions" / key.replace("+", "_"))


def _cpu_only_torch() -> bool:
    """A torch build that can drive no accelerator DeepSpeed knows (CUDA/ROCm, XPU, MPS, NPU)."""
    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return False
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return False
    if torch.backends.mps.is_available() or hasattr(torch, "npu"):
        return False
    return True


def cap_heap_retention(threshold: int = 1 << 20) -> bool:
    """CPU ranks: serve every allocation of ``threshold`` bytes or more with its own mmap, returned to the
    system when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; a ``MALLOC_MMAP_THRESHOLD_`` already set wins).

    Under ZeRO-3 a rank gathers and frees every weight at every step. glibc's *dynamic* threshold rises to
    the largest block freed so far (up to 32 MiB), so gathered weights below that come from its heaps, which it
    rarely gives back: a 0.48B llama-shaped rank on 2 CPU ranks grew from 3.6 to 4.9 GiB peak RSS over 3 steps
    and kept 1.3-2.3 GiB after each step; with the threshold fixed at 1 MiB the peak stays at 3.3-3.4 GiB, RSS
    falls back to baseline + partition after each step, and the step is no slower
    (benchmarks/memory_check.py --scale). Returns whether the setting was applied."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:       # not glibc
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, threshold))


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
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    if "DS_ACCELERATOR" not in os.environ and _cpu_only_torch():
        # Said explicitly, DeepSpeed picks the CPU accelerator quietly; left to detect it, every process warns
        # "Setting accelerator to CPU. If you have GPU ..." - nothing to act on with a CPU-only torch build.
        os.environ["DS_ACCELERATOR"] = "cpu"
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        cap_heap_retention()           # before any model is built: host RSS then tracks live tensors
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")


def _quiet_deepspeed_imports() -> None:
    # torch.distributed deprecation notices fire on every ZeRO step from inside DeepSpeed: not actionable here.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated.*")


def init_process_group() -> tuple[int, int, torch.device]:
    """(rank, world_size, device): torch.distributed only (NCCL on CUDA, gloo on the CPU accelerator).

    Cheap: no DeepSpeed op is built or loaded, so the ranks can agree on the output directory (the lock) and
    fail together before the expensive part. Idempotent.
    """
    from deepspeed.accelerator import get_accelerator

    setup_env()
    _quiet_deepspeed_imports()
    acc = get_accelerator()
    on_cpu = acc.device_name() == "cpu"
    local = int(os.environ["LOCAL_RANK"])
    if not on_cpu:
        acc.set_device(local)
    if not dist.is_initialized():
        backend = "gloo" if on_cpu else acc.communication_backend_name()
        if int(os.environ["WORLD_SIZE"]) == 1:
            # a world of one needs no rendezvous: an in-memory store, so no port can be taken by another process
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend=backend, init_method="env://")
    device = torch.device("cpu") if on_cpu else torch.device(acc.device_name(), local)
    return dist.get_rank(), dist.get_world_size(), device


def init_deepspeed_comm() -> None:
    """DeepSpeed's communication layer over the existing process group.

    On the CPU accelerator DeepSpeed compiles a shared-memory all-reduce op here. A one-process run never
    communicates, so it builds none; multi-rank runs build it once per environment (``_extensions_dir``) and
    rank 0 says so first, since the build is a minute of silence.
    """
    import contextlib
    import importlib
    import io

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # by module path: ``deepspeed.comm`` has an attribute ``torch`` (the torch package) that shadows it
    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", _extensions_dir())
    on_cpu = get_accelerator().device_name() == "cpu"
    saved = ds_torch_comm.build_shm_op
    if on_cpu and dist.get_world_size() == 1:
        ds_torch_comm.build_shm_op = lambda: None          # nothing to all-reduce in a world of one
    elif on_cpu and is_rank0():
        built = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
        if not built.is_file():
            log.info("compiling DeepSpeed's CPU shared-memory communication op into %s (once per "
                     "environment; about a minute)", built.parent)
    try:
        with contextlib.redirect_stdout(io.StringIO()):    # "DeepSpeed ... built successfully", every run
            deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
    finally:
        ds_torch_comm.build_shm_op = saved
    if on_cpu and dist.get_world_size() > 1:
        unlink_shm_segment()


def shm_segment_name(rank: int) -> str:
    """The /dev/shm name DeepSpeed's CPU all-reduce op gives this run's rank (ops/csrc/cpu/comm/shm.cpp:
    ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``)."""
    return (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def unlink_shm_segment() -> None:
    """Remove this rank's shared-memory segment name once every rank has mapped it.

    DeepSpeed never unlinks it, so each multi-rank CPU run left ~69 MB per rank in /dev/shm (a RAM-backed
    tmpfs) until reboot. A rank leaves ``shm_initialize`` only after mapping every other rank's segment, so
    after this barrier nobody opens a name again; the mappings stay valid until the process exits, and a
    killed run leaks nothing either."""
    dist.barrier()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path("/dev/shm") / shm_segment_name(dist.get_rank()))


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) with DeepSpeed's communication layer ready. Idempotent."""
    rank, world, device = init_process_group()
    init_deepspeed_comm()
    return rank, world, device


def is_rank0() -> bool:
    """Global rank 0; before the process group exists, as the launcher's environment says (preflight errors)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


_saved_logging: dict[str, object] = {}

# DeepSpeed warnings that fire on every run and that no user can act on.
_DS_NOISE = (
    # WarmupLR.__init__ asks itself for an lr before its first step, on every run and every rank
    "Attempting to get learning rate from scheduler before it has started",
)


def _drop_known_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_DS_NOISE)


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
    if _drop_known_noise not in logging.getLogger("DeepSpeed").filters:
        logging.getLogger("DeepSpeed").addFilter(_drop_known_noise)


def log_error(err: BaseException) -> None:
    """A user's mistake, reported once: one line on stderr from rank 0, and the same line in the run's
    ``train.log`` when this run owns one (never in another run's: the log opens only after the checks)."""
    from megaprompt.cli import fail, one_line

    if not is_rank0():
        return
    try:    # a progress bar left open mid-line would swallow the start of the error line
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except ImportError:
        pass
    fail(err)
    for h in _saved_logging.get("handlers", []):
        if isinstance(h, logging.FileHandler):
            h.emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (one_line(err),), None))


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


def rank0_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the other ranks (which then find what rank 0 cached).

    A user error on rank 0 fails every rank at once, instead of leaving the others waiting at a barrier for a
    rank that has exited; only rank 0's message is shown (every rank must call this).
    """
    from megaprompt.errors import UserError

    result, error = None, None
    if is_rank0():
        try:
            result = fn()
        except UserError as err:
            error = err
    if any_true(error is not None):
        raise error if error is not None else UserError("rank 0 failed (its message says why)")
    return fn() if not is_rank0() else result


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
