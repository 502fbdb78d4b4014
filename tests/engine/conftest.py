"""Helpers for engine tests: real 2-rank DeepSpeed runs (CPU accelerator, gloo) through the launcher."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "megaprompt" / "train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
             PYTHONPATH=f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}")
    return e


def launch(args: list[str], nproc: int = 2, script: Path = TRAIN, timeout: int = 300) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus N script args`` - exactly what users type. A run that exits cleanly must leave
    none of DeepSpeed's CPU all-reduce segments in /dev/shm (RAM) behind (``distributed.unlink_shm_segment``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
           "--master_port", str(port), str(script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    left = sorted(p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    if proc.returncode == 0 and left:
        pytest.fail(f"the run left shared-memory segments behind: {left}")
    return proc


def run_ok(args: list[str], **kw) -> subprocess.CompletedProcess:
    proc = launch(args, **kw)
    if proc.returncode != 0:
        pytest.fail(f"launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def tiny_args(out: Path, *extra: str) -> list[str]:
    """A short, fully deterministic tiny-bert run on the demo task (dropout on: RNG must be restored too)."""
    return ["--ds_config", str(ROOT / "ds_configs" / "zero3.json"), "--backbone", "tiny-bert", "--task", "demo",
            "--output_dir", str(out), "--max_steps", "30", "--batch_size", "8", "--lr", "1e-2",
            "--eval_every", "30", "--log_every", "1", "--prompt_len", "4", "--max_train_examples", "480",
            "--seed", "7", "--precision", "fp32", *extra]


def scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = sorted(tb_dir.glob("events.out.tfevents.*"))
    out: dict[int, float] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return sorted(out.items())


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def checkpoint_tensors(step_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor in one checkpoint tag's files, ``{"file:key/path": shape}``. DeepSpeed's ``.pt`` files are
    read with ``torch.load(weights_only=True)`` and an allow-list of the plain DeepSpeed types they hold, so a
    file that needed arbitrary pickled objects fails here; ``.safetensors`` with safetensors."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    from safetensors.torch import load_file

    out: dict[str, tuple[int, ...]] = {}

    def walk(obj, where: str) -> None:
        if isinstance(obj, torch.Tensor):
            out[where] = tuple(obj.shape)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    for f in sorted(step_dir.iterdir()):
        if f.suffix == ".pt":
            with torch.serialization.safe_globals([ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]):
                walk(torch.load(f, map_location="cpu", weights_only=True), f.name + ":")
        elif f.suffix == ".safetensors":
            walk(load_file(str(f)), f.name + ":")
    return out


def assert_only_trainable_in_checkpoint(step_dir: Path, trainable: dict[str, tuple[int, ...]]) -> None:
    """No frozen (backbone) tensor was saved: DeepSpeed's files name only ``trainable`` parameters, and all
    their tensors together hold at most fp32 master + Adam's two moments of the trainable parameters (+ the
    0-size ZeRO-3 placeholders); the safetensors files hold only RNG state."""
    import math
    tensors = checkpoint_tensors(step_dir)
    assert tensors, f"no tensors in {step_dir}"
    frozen = [k for k in tensors if "backbone." in k]
    assert not frozen, f"{len(frozen)} frozen tensors saved, e.g. {frozen[:3]}"
    named = {k.rsplit("/", 1)[-1] for k in tensors if "/module/" in k}
    assert named <= set(trainable), named - set(trainable)
    pt = sum(math.prod(s) for k, s in tensors.items() if k.split(":")[0].endswith(".pt"))
    n_trainable = sum(math.prod(s) for s in trainable.values())
    assert pt <= 3 * n_trainable + 64 * len(list(step_dir.glob("*optim_states.pt"))), (pt, n_trainable)
    rng = {k.split(":")[0] for k, s in tensors.items() if k.split(":")[0].endswith(".safetensors")}
    assert all(name.startswith("rng_rank") for name in rng), rng


# A small topic-classification data set for runs that must learn within a few steps (generic_cls files,
# generated here, never committed): a food word or a vehicle word in neutral templates. A frozen pretrained
# encoder separates the two topics almost linearly, so P-Tuning v2 learns it in a handful of steps; 10% of the
# labels (train and dev) are flipped, so dev accuracy tops out near 90% and moves between evaluations.
TOPIC_WORDS = {
    "food": ["apple", "banana", "bread", "cheese", "soup", "pasta", "salad", "cake", "rice", "pizza", "mango",
             "carrot", "sandwich", "cookie", "omelette", "noodles"],
    "vehicle": ["truck", "bicycle", "train", "airplane", "boat", "motorcycle", "bus", "tractor", "scooter",
                "helicopter", "van", "ship", "taxi", "tram", "canoe", "jeep"],
}
TOPIC_TEMPLATES = ["I saw a {} yesterday.", "The {} was next to the house.", "My friend talked about the {} all day.",
                   "There is a {} in the picture.", "She asked me where the {} was.",
                   "We found an old {} near the river.", "He pointed at the {} and laughed.",
                   "Nobody expected a {} at the party."]


def write_topic_task(folder: Path, n_train: int = 320, n_dev: int = 240, noise: float = 0.1, seed: int = 0) -> Path:
    import random
    rng = random.Random(seed)
    labels = sorted(TOPIC_WORDS)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            topic = labels[i % 2]
            text = rng.choice(TOPIC_TEMPLATES).format(rng.choice(TOPIC_WORDS[topic]))
            label = labels[1 - i % 2] if rng.random() < noise else topic
            rows.append(json.dumps({"text": text, "label": label}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder
