"""Predict with an exported prompt: metrics when the split has labels, and leaderboard submission files.

    python -m megaprompt.predict --export runs/rte/export --task rte --data_dir data/RTE --split test
    deepspeed --num_gpus 2 -m megaprompt.predict ...      # each rank predicts a shard; rank 0 writes

The backbone is rebuilt from the export's own record (``backbone_arg``; tiny random backbones from its
seed) and checked against the export's backbone facts before any tensor is loaded. A verbalizer export
(``head_type``) gets its MLM head from the backbone checkpoint and the same [MASK] template as training.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="megaprompt.predict", description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True, help="an export directory written by train.py")
    p.add_argument("--task", help="task name (default: the export's task)")
    p.add_argument("--data_dir", help="the task's folder (default: built-in / hub)")
    p.add_argument("--split", default="test", help="train, dev or test (default test)")
    p.add_argument("--output_dir", help="where predictions go (default: <export>/../predictions)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_len", type=int, help="default: the training run's")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def predict(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from megaprompt.backbones.load import load_backbone, load_tokenizer
    from megaprompt.engine.data import split_outputs
    from megaprompt.engine.distributed import init_distributed, is_rank0, log, setup_logging
    from megaprompt.export import load_export, read_export
    from megaprompt.heads.verbalizer import VerbalizerHead, add_mask_token
    from megaprompt.model import build_model
    from megaprompt.prompts import PromptConfig
    from megaprompt.tasks import get_task
    from megaprompt.tasks.encoding import cached_encode

    rank, world, device = init_distributed()
    setup_logging()
    meta, _ = read_export(args.export)
    task = get_task(args.task or meta["task"], data_dir=args.data_dir)
    if meta.get("label_names") and list(task.label_names) != meta["label_names"]:
        if task.label_names:    # a fixed label set that differs: this export belongs to another task
            raise ValueError(f"--task {task.name} has labels {task.label_names} but the export was trained with "
                             f"{meta['label_names']}")
        task = get_task(args.task or meta["task"], data_dir=args.data_dir, label_names=meta["label_names"])
    if meta.get("null_threshold") is not None and hasattr(task, "null_threshold"):
        task.null_threshold = meta["null_threshold"]
    if task.head != meta["head"]["kind"]:
        raise ValueError(f"--task {task.name} needs a {task.head!r} head but the export has "
                         f"{meta['head']['kind']!r} (trained on {meta['task']!r})")
    verbalizer = meta.get("head_type", "linear") == "verbalizer"
    tokenizer = load_tokenizer(meta["backbone_arg"])
    backbone, _, *mlm = load_backbone(meta["backbone_arg"], seed=meta.get("seed", 0), with_mlm_head=verbalizer)
    head = VerbalizerHead.for_words(mlm[0], tokenizer, meta["label_words"]) if verbalizer else None
    model = build_model(backbone, PromptConfig(**meta["prompt"]), task.head, meta["head"]["num_labels"],
                        name=meta["backbone_arg"], head=head)
    load_export(model, args.export)
    model.to(device).eval()
    examples = task.load(args.data_dir, args.split)
    max_seq_len = args.max_seq_len or meta.get("max_seq_len", 128)
    split = cached_encode(task, args.split, examples, tokenizer, max_seq_len)
    if verbalizer:
        split = replace(split, features=add_mask_token(split.features, tokenizer, max_seq_len))
    outputs = split_outputs(lambda b: model(**b)["logits"], task.head, split, tokenizer.pad_token_id,
                            args.batch_size, rank, world, device)
    result: dict[str, Any] = {"task": task.name, "split": args.split, "examples": len(examples)}
    if task.labelled(examples):
        result["metrics"] = {k: float(v) for k, v in task.evaluate(outputs, split).items()}
    if is_rank0():
        out = Path(args.output_dir or Path(args.export).resolve().parent / "predictions")
        out.mkdir(parents=True, exist_ok=True)
        preds = task.predict(outputs, split)
        files = _write_submission(task, preds, split, out, args.split)
        result["files"] = [str(f) for f in files]
        (out / f"{task.name}_{args.split}_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        log.info("%s", json.dumps(result))
    del torch
    return result


def _write_submission(task: Any, preds: list[Any], split: Any, out: Path, split_name: str) -> list[Path]:
    try:
        from megaprompt.tasks.submission import write_submission
    except ImportError:
        path = out / f"{task.name}_{split_name}.jsonl"
        path.write_text("".join(json.dumps({"idx": i, "label": p}) + "\n" for i, p in enumerate(preds)))
        return [path]
    return list(write_submission(task, preds, split, out, split_name))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from megaprompt.engine.distributed import destroy
    try:
        predict(args)
    except (ValueError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
