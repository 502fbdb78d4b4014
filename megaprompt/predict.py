"""Predict with an exported prompt: metrics when the split has labels, and leaderboard submission files.

    python -m megaprompt.predict --export runs/rte-pt2-minilm/export --data_dir data/RTE --split test
    deepspeed --num_gpus 2 megaprompt/predict.py ...      # each rank predicts a shard; rank 0 writes

The task, the backbone and ``max_seq_len`` are read from the export; a multi-task export needs ``--task``
to pick one of its tasks, a single-task export may be used for another task with the same head and labels.
The model is put together by ``assemble.load_exports`` (the code serving uses too): the backbone from the
export's own record (``backbone_arg``; tiny random backbones from its seed), checked against the export's
backbone facts and weight fingerprint before any tensor is loaded. A verbalizer export (``head_type``) gets
its MLM head from the backbone checkpoint and the same [MASK] template as training.

Outputs go to ``<run>/predictions/<split>/`` by default (or ``--output_dir``): the submission file in the
benchmark's own format and ``<task>_<split>_metrics.json``. An existing file is never overwritten unless
``--overwrite`` says so. Every check that needs no model runs first, so a mistake costs seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaprompt.cli import ArgumentParser, one_line  # noqa: E402
from megaprompt.errors import UserError  # noqa: E402


def parse(argv: list[str] | None) -> Any:
    p = ArgumentParser(prog="megaprompt.predict", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--export", required=True, help="an export directory written by train.py")
    p.add_argument("--task", help="task name (default: the export's task; required when it has several)")
    p.add_argument("--data_dir", help="the task's folder (default: built-in / hub)")
    p.add_argument("--split", default="test", help="train, dev or test (default: test)")
    p.add_argument("--output_dir", help="where predictions go (default: <export>/../predictions/<split>)")
    p.add_argument("--overwrite", action="store_true", help="replace prediction files that already exist")
    p.add_argument("--batch_size", type=int, default=32, help="examples per forward pass (default: 32)")
    p.add_argument("--max_seq_len", type=int, help="default: the training run's")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)    # set by the deepspeed launcher
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size {args.batch_size}: expected >= 1")
    if args.max_seq_len is not None and args.max_seq_len < 8:
        p.error(f"--max_seq_len {args.max_seq_len}: expected >= 8")
    return args


@dataclass
class Plan:
    """What the cheap checks resolved."""

    meta: dict[str, Any]
    task: Any
    slot: str                 # the export's task whose prompt route and head predict
    head: dict[str, Any]      # that task's head json
    max_seq_len: int
    out: Path


def check(args: Any) -> Plan:
    """Everything that needs no model: the export, the task and its data, the position limit, the output files."""
    from megaprompt.backbones.load import load_config
    from megaprompt.engine.preflight import check_positions
    from megaprompt.export import read_export
    from megaprompt.files import check_writable
    from megaprompt.tasks import get_task

    data = read_export(args.export)
    meta = data.meta
    if args.task in data.heads or (args.task is None and len(data.tasks) == 1):
        slot = args.task or data.tasks[0]
    elif len(data.tasks) == 1:
        slot = data.tasks[0]                  # another task that the export's head fits (checked below)
    else:
        raise UserError(f"{args.export} holds tasks {', '.join(data.tasks)}: pass --task with one of them"
                        if args.task is None else f"--task {args.task}: not in {args.export} (it holds "
                        f"{', '.join(data.tasks)})")
    head = data.heads[slot][0]
    task = get_task(args.task or slot, data_dir=args.data_dir)
    if task.head != head["kind"]:
        raise UserError(f"--task {task.name} needs a {task.head!r} head but the export has "
                        f"{head['kind']!r} (trained on {slot!r})")
    if head.get("label_names") and list(task.label_names) != head["label_names"]:
        if task.label_names:    # a fixed label set that differs: this export belongs to another task
            raise UserError(f"--task {task.name} has labels {task.label_names} but the export was trained with "
                            f"{head['label_names']}")
        task = get_task(args.task or slot, data_dir=args.data_dir, label_names=head["label_names"])
    if args.data_dir is not None:
        task.require_files(args.data_dir, args.split)    # presence only
    max_seq_len = args.max_seq_len or head.get("max_seq_len") or meta.get("max_seq_len", 128)
    prompt_len = sum(data.prompts[p][0].get("prompt_len", 0) for p in head.get("route", []))
    check_positions(load_config(meta["backbone_arg"]), meta["backbone_arg"], max_seq_len, meta["method"], prompt_len)
    out = Path(args.output_dir) if args.output_dir else Path(args.export).resolve().parent / "predictions" / args.split
    check_writable(out, "--output_dir")
    metrics_file = out / f"{task.name}_{args.split}_metrics.json"
    if not args.overwrite and metrics_file.exists():
        raise UserError(f"{metrics_file} exists (predictions of an earlier call): pass --overwrite to replace "
                        f"them, or another --output_dir")
    return Plan(meta, task, slot, head, max_seq_len, out)


def predict(args: Any) -> dict[str, Any]:
    from megaprompt.assemble import load_exports
    from megaprompt.engine.data import split_outputs
    from megaprompt.engine.distributed import init_distributed, is_rank0, rank0_first, setup_logging
    from megaprompt.heads.verbalizer import add_mask_token
    from megaprompt.tasks import load_split

    try:
        plan = check(args)
    except ValueError as err:         # unknown task or split, bad export: the message names it
        raise UserError(one_line(err)) from None
    task, head = plan.task, plan.head
    if head.get("null_threshold") is not None and hasattr(task, "null_threshold"):
        task.null_threshold = head["null_threshold"]
    rank, world, device = init_distributed()
    setup_logging()
    verbalizer = head.get("head_type", "linear") == "verbalizer"
    model, _, tokenizer = load_exports([args.export])
    model.to(device).eval()
    transform = partial(add_mask_token, tokenizer=tokenizer, max_seq_len=plan.max_seq_len) if verbalizer else None

    def load() -> Any:     # rank 0 builds the split's cache, the other ranks then memory-map it
        try:
            return load_split(task, args.data_dir, args.split, tokenizer, plan.max_seq_len, transform=transform)
        except ValueError as err:
            raise UserError(one_line(err)) from None
    split = rank0_first(load)
    outputs = split_outputs(lambda b: model(**b, task=plan.slot)["logits"], task.head, split, tokenizer.pad_token_id,
                            args.batch_size, rank, world, device)
    result: dict[str, Any] = {"task": task.name, "split": args.split, "examples": len(split.examples),
                              "features": len(split)}
    if task.labelled(split.examples):
        result["metrics"] = {k: float(v) for k, v in task.evaluate(outputs, split).items()}
    if is_rank0():
        preds = task.predict(outputs, split)
        files = _write_submission(task, preds, split, plan.out, args.split, args.overwrite)
        result["files"] = [str(f) for f in files]
        metrics_file = plan.out / f"{task.name}_{args.split}_metrics.json"
        from megaprompt.files import atomic_write_text
        atomic_write_text(metrics_file, json.dumps(result, indent=2) + "\n")
        _summary(result, metrics_file)
    return result


def _write_submission(task: Any, preds: list[Any], split: Any, out: Path, split_name: str,
                      overwrite: bool) -> list[Path]:
    """The benchmark-format file(s), written to a scratch directory first so an existing file is never replaced
    unless ``overwrite`` (two splits share a leaderboard file name, e.g. ``RTE.jsonl``)."""
    import shutil
    import tempfile

    from megaprompt.files import follow_umask
    from megaprompt.tasks.submission import write_submission

    scratch = Path(tempfile.mkdtemp(prefix=".predict-", dir=out))
    try:
        written = list(write_submission(task, preds, split, scratch, split_name))
        final = [out / f.relative_to(scratch) for f in written]
        clash = [f for f in final if f.exists()]
        if clash and not overwrite:
            raise UserError(f"{clash[0]} exists (another split or an earlier call wrote it): pass --overwrite to "
                            f"replace it, or another --output_dir")
        for src, dst in zip(written, final):
            follow_umask(src, directory=False)
            src.replace(dst)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summary(result: dict[str, Any], metrics_file: Path) -> None:
    lines = [f"predict {result['task']} / {result['split']}: {result['examples']} examples "
             f"({result['features']} features)"]
    if "metrics" in result:
        lines.append("metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()))
    lines += [f"wrote {f}" for f in result["files"]] + [f"wrote {metrics_file}"]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from megaprompt.engine.distributed import destroy, log_error
    try:
        predict(args)
    except (UserError, OSError) as err:
        log_error(UserError(one_line(err)))
        return 2
    finally:
        destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
