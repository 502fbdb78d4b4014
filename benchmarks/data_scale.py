"""Data pipeline at scale: a synthetic sentence-pair task of N examples (default 400,000).

    python benchmarks/data_scale.py [--n 400000] [--small 1000] [--json PATH] [--data ../shared/data]

The task is ``generic_cls`` (jsonl, ``text`` / ``text_pair`` / ``label``) built from GLUE SST-2 sentences paired at
random (seeded), or from a seeded word generator when ``../shared/data`` is absent; the label is the first
sentence's SST-2 label. Backbone all-MiniLM-L6-v2 (``--backbone minilm``), max_seq_len 128. Measured, each in a
fresh process so nothing is shared between them, with an empty feature cache (``MEGAPROMPT_CACHE``) per size:

- ``encode_s``: first-time ``get_task`` + ``load_split`` of the train split in one process (label set, read +
  validate + tokenize + cache write), with the tokenizer's default threads, and ``encode_examples_per_s`` = N /
  ``encode_s``;
- ``cached_first_step_s``: a real 2-rank training run (``deepspeed --num_gpus 2``, ZeRO-3, CPU/gloo) on the cached
  task: seconds from process start to the end of optimizer step 1, as the trainer logs it (rank 0);
- ``rss_mb_per_rank``: peak RSS of the largest rank process of that run (``RUSAGE_CHILDREN`` of a wrapper that
  only runs the launcher, so it is the worst rank, not a sum), which runs one step and a final evaluation of the
  200-example dev split; ``rss_mb_per_rank_small``: the same run on an ``--small``-example task.

Only the public entry points that exist before and after the Arrow pipeline are used (``get_task``,
``load_split(task, data_dir, split, tokenizer, max_seq_len)``, ``train.py``), so the same script measures both.
The small task runs first (it also warms DeepSpeed's op build), then the large one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_N = 200


def sst2_sentences(data: Path) -> list[tuple[str, str]]:
    f = data / "glue" / "SST-2" / "train.tsv"
    if not f.is_file():
        rng = random.Random(0)
        words = [f"w{i}" for i in range(3000)]
        return [(" ".join(rng.choice(words) for _ in range(rng.randint(4, 30))), str(i % 2)) for i in range(60000)]
    lines = f.read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(x.split("\t")) for x in lines if x.count("\t") == 1]   # type: ignore[misc]


def write_task(d: Path, sents: list[tuple[str, str]], n: int, seed: int) -> None:
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", n), ("dev", DEV_N)):
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(count):
                (a, label), (b, _) = rng.choice(sents), rng.choice(sents)
                f.write(json.dumps({"text": a, "text_pair": b, "label": label}) + "\n")


ENCODE = """
import json, sys, time
t0 = time.perf_counter()
from megaprompt.backbones.load import load_tokenizer
from megaprompt.tasks import get_task, load_split
tok = load_tokenizer("minilm")
t1 = time.perf_counter()
task = get_task("generic_cls", data_dir=sys.argv[1])
n = len(load_split(task, sys.argv[1], "train", tok, 128))
t2 = time.perf_counter()
load_split(task, sys.argv[1], "dev", tok, 128)
print(json.dumps({"encode_s": t2 - t1, "features": n}))
"""

LAUNCH = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, flush=True)
sys.exit(rc)
"""


def env(cache: Path, port: int) -> dict[str, str]:
    e = dict(os.environ)
    e.update(MEGAPROMPT_CACHE=str(cache), DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}", MASTER_PORT=str(port))
    return e


def encode(d: Path, cache: Path, port: int) -> dict[str, float]:
    e = env(cache, port)
    del e["TOKENIZERS_PARALLELISM"], e["OMP_NUM_THREADS"]   # encode as a user's process does: Rust threads on
    out = subprocess.run([sys.executable, "-c", ENCODE, str(d)], env=e, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


RUNS = [0]


def train(d: Path, cache: Path, work: Path, port: int, tries: int = 3) -> dict[str, float]:
    """One 2-rank run, each on its own port; a run whose ranks lose their connection (seen on this shared machine
    under load, in runs of the old and the new pipeline alike) is retried, and the retries are reported."""
    for attempt in range(tries):
        try:
            return {**_train(d, cache, work, port), "retries": attempt}
        except RuntimeError as err:
            print(f"run failed (attempt {attempt + 1} of {tries}): {err}", file=sys.stderr, flush=True)
    raise SystemExit("training failed; see above")


def _train(d: Path, cache: Path, work: Path, port: int) -> dict[str, float]:
    RUNS[0] += 1
    port += RUNS[0]
    out = work / f"run-{d.name}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
           str(ROOT / "megaprompt" / "train.py"), "--ds_config", str(ROOT / "ds_configs" / "zero3.json"),
           "--backbone", "minilm", "--task", "generic_cls", "--data_dir", str(d), "--max_seq_len", "128",
           "--max_steps", "1", "--batch_size", "8", "--output_dir", str(out), "--precision", "fp32"]
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *cmd], env=env(cache, port), cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        first = [x for x in proc.stderr.splitlines() if "Error" in x][:3]
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(first)}")
    rss = float(re.search(r"PEAK_RSS_MB ([\d.]+)", proc.stdout).group(1))   # type: ignore[union-attr]
    log = (out / "train.log").read_text(encoding="utf-8")
    first = float(re.search(r"first step done, ([\d.]+) s after", log).group(1))   # type: ignore[union-attr]
    return {"first_step_s": first, "rss_mb": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MASTER_PORT", 30100)))
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="data_scale-"))
    sents = sst2_sentences(Path(args.data))
    res: dict[str, float | int | str] = {"n": args.n, "small": args.small, "cpus": os.cpu_count() or 0,
                                         "load_before": os.getloadavg()[0]}
    for n, tag in ((args.small, "small"), (args.n, "large")):
        d, cache = work / f"task{n}", work / f"cache{n}"
        write_task(d, sents, n, seed=n)
        enc = encode(d, cache, args.port)
        print(f"{tag}: encode {enc['encode_s']:.1f} s ({n} examples)", flush=True)
        if tag == "small":
            train(d, cache, work, args.port)    # warm-up: DeepSpeed op build, page cache
        run = train(d, cache, work, args.port)
        print(f"{tag}: cached first step {run['first_step_s']:.1f} s, peak RSS per rank {run['rss_mb']:.0f} MB",
              flush=True)
        res[f"retries_{tag}"] = run["retries"]
        if tag == "small":
            res["rss_mb_per_rank_small"] = round(run["rss_mb"], 1)
            res["cached_first_step_s_small"] = round(run["first_step_s"], 2)
        else:
            res.update(encode_s=round(enc["encode_s"], 2), encode_examples_per_s=round(n / enc["encode_s"], 1),
                       cached_first_step_s=round(run["first_step_s"], 2), rss_mb_per_rank=round(run["rss_mb"], 1))
    res["rss_ratio"] = round(float(res["rss_mb_per_rank"]) / float(res["rss_mb_per_rank_small"]), 3)
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
