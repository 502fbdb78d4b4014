"""One frozen backbone serving many task prompts, with rows of different tasks in one batch.

Prompt tuning's practical payoff (Lester et al., 2021, Sec. 1; PEFT's mixed-batch ``task_ids`` routing): each
task adds a prompt and a head of a few megabytes, not a model. ``assemble.load_exports`` loads one backbone
and every export's prompts and heads (each export checked against the backbone's shape facts and weight
fingerprint first); ``PromptedModel.forward(task_ids=...)`` gives every row its own prefix (the prompt bank
pads prefixes of different lengths / layers with a per-row mask) and runs each head on its own rows.

    server = Server(["runs/rte/export", "runs/multi/export"])          # backbone from the exports' record
    server.predict([{"task": "rte", "premise": "...", "hypothesis": "..."},
                    {"task": "cb", "text": "...", "text_pair": "..."}])  # -> predictions, in input order

    python -m megaprompt.serve --export runs/rte/export --export runs/multi/export \\
        --input rows.jsonl --output predictions.jsonl

A row names its ``task`` and carries the task's own input fields (as in its data files: ``premise`` /
``hypothesis`` for RTE, ``tokens`` for NER, ...) or, for sentence and sentence-pair tasks, ``text`` and
``text_pair``; ``{"task": ..., "inputs": {...}}`` works too. Rows are encoded by their task exactly as in
training, then batched across tasks: features sorted by length (bucketing: little padding), at most
``batch_size`` rows and ``max_tokens`` padded tokens per batch; multiple-choice features only batch with
features of the same number of choices. Outputs go back to input order.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from megaprompt.cli import ArgumentParser, one_line
from megaprompt.errors import UserError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class _Served:
    """One served task: the benchmark task (reader, encoder, decoder), its head json, its row in the model."""

    name: str
    task: Any
    index: int
    max_seq_len: int


def release_host_memory() -> None:
    """Hand memory freed while loading (each export's tensors are read, then copied into its module) back to
    the OS. glibc keeps small freed blocks in its arenas, which made every loaded task cost about 1.4x its
    tensors in resident memory; after ``malloc_trim`` it is within ~10% (``benchmarks/multi_prompt.py``)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):      # not glibc: nothing to do
        pass


def _task_for(slot: str, head: dict[str, Any]) -> Any:
    """The task object of an export's task ``slot``, with the label set the head was trained on."""
    from megaprompt.tasks import get_task

    labels = head.get("label_names") or []
    try:
        task = get_task(slot)
    except ValueError:            # tasks whose label set comes from the data: restored from the export
        task = None
    if task is None or (labels and not task.label_names):
        task = get_task(slot, label_names=labels)
    if task.head != head["kind"]:
        raise UserError(f"export task {slot!r}: head {head['kind']!r}, but task {task.name} needs {task.head!r}")
    return task


class Server:
    """Many exports on one backbone; ``predict(rows)`` answers rows of any of their tasks, in input order."""

    def __init__(self, exports: Sequence[str | Path], backbone: str | None = None, device: str = "cpu",
                 dtype: str = "fp32", batch_size: int = 32, max_tokens: int | None = None) -> None:
        from megaprompt.assemble import load_exports
        from megaprompt.export import ExportMismatch

        if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
            raise UserError(f"batch_size {batch_size} / max_tokens {max_tokens}: expected positive integers")
        try:
            self.model, datas, self.tokenizer = load_exports(list(exports), backbone, DTYPES[dtype])
        except (ExportMismatch, ValueError, OSError) as err:
            raise UserError(one_line(err)) from None
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.tasks: dict[str, _Served] = {}
        for d in datas:
            for slot in d.tasks:
                head = d.heads[slot][0]
                msl = int(head.get("max_seq_len") or d.meta.get("max_seq_len") or 128)
                self.tasks[slot] = _Served(slot, _task_for(slot, head), self.model.task_index(slot), msl)
        del datas                            # their tensors were copied into the model
        release_host_memory()

    # ---- rows -> examples -> features ------------------------------------------------------------------------
    def _examples(self, served: _Served, rows: list[tuple[int, dict[str, Any]]], where: str) -> list[dict[str, Any]]:
        """The task's own reader on the rows (validation and one-line errors as for its data files)."""
        task = served.task
        fields = getattr(task, "fields", None)
        raw = []
        for line, row in rows:
            r = dict(row.get("inputs") or {}, **{k: v for k, v in row.items() if k not in ("inputs", "task")})
            if fields and len(fields) == 2 and fields[0] and fields[0] not in r and "text" in r:
                r[fields[0]] = r.pop("text")             # text / text_pair -> the task's own pair fields
                if "text_pair" in r:
                    r[fields[1]] = r.pop("text_pair")
            r["_line"] = line
            raw.append(r)
        try:
            return task.prepare(task.parse_rows(raw, where, "test"))
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(one_line(err)) from None

    def _encode(self, rows: Sequence[dict[str, Any]], where: str, lines: Sequence[int]) -> dict[str, tuple[list[int], Any]]:
        """task -> (input positions of its rows, EncodedSplit of their features)."""
        by_task: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
        for pos, (line, row) in enumerate(zip(lines, rows)):
            if not isinstance(row, dict):
                raise UserError(f"{where}:{line}: expected a JSON object, got {type(row).__name__}")
            name = row.get("task")
            if name not in self.tasks:
                raise UserError(f"{where}:{line}: task {name!r} is not served (served: {', '.join(self.tasks)})")
            by_task.setdefault(name, []).append((pos, line, row))
        out = {}
        for name, items in by_task.items():
            served = self.tasks[name]
            examples = self._examples(served, [(line, row) for _, line, row in items], where)
            split = served.task.encode(examples, self.tokenizer, served.max_seq_len)
            out[name] = ([pos for pos, _, _ in items], split)
        return out

    def _batches(self, encoded: dict[str, tuple[list[int], Any]]) -> Iterable[list[tuple[str, int]]]:
        """(task, feature index) batches: one shape class each, sorted by length, bounded in rows and tokens."""
        keyed: list[tuple[tuple[int, int], str, int]] = []
        for name, (_, split) in encoded.items():
            for j, ids in enumerate(split.column("input_ids")):
                choices = len(ids) if ids and isinstance(ids[0], list) else 0
                length = max(len(s) for s in ids) if choices else len(ids)
                keyed.append(((choices, length), name, j))
        keyed.sort(key=lambda k: k[0])
        batch: list[tuple[str, int]] = []
        shape, longest = None, 0
        for (choices, length), name, j in keyed:
            rows = max(choices, 1)
            new_longest = max(longest, length)
            too_many = len(batch) + 1 > self.batch_size
            too_long = self.max_tokens is not None and (len(batch) + 1) * rows * new_longest > self.max_tokens
            if batch and (choices != shape or too_many or too_long):
                yield batch
                batch, longest = [], 0
            batch.append((name, j))
            shape, longest = choices, max(longest, length)
        if batch:
            yield batch

    @torch.no_grad()
    def outputs(self, rows: Sequence[dict[str, Any]], where: str = "rows",
                lines: Sequence[int] | None = None) -> dict[str, tuple[list[int], Any, list[np.ndarray]]]:
        """task -> (input positions, EncodedSplit, per-feature logits in feature order)."""
        from megaprompt.tasks.pipeline import EncodedSplit

        lines = list(lines) if lines is not None else list(range(1, len(rows) + 1))
        encoded = self._encode(rows, where, lines)
        logits: dict[str, list[np.ndarray | None]] = {n: [None] * len(s) for n, (_, s) in encoded.items()}
        pad = self.tokenizer.pad_token_id
        for batch in self._batches(encoded):
            feats = [{k: v for k, v in encoded[n][1].features[j].items()
                      if k in ("input_ids", "attention_mask", "token_type_ids")} for n, j in batch]
            inputs, lengths = EncodedSplit(feats).model_inputs(range(len(feats)), pad, lengths=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            task_ids = torch.tensor([self.tasks[n].index for n, _ in batch], device=self.device)
            out = self.model(**inputs, task_ids=task_ids)["per_task"]
            for name, res in out.items():
                mine = [i for i, (n, _) in enumerate(batch) if n == name]
                values = res["logits"].float().cpu().numpy()          # this task's rows, in batch order
                token_level = self.tasks[name].task.head in ("tag", "span")
                for k, i in enumerate(mine):
                    # token-level heads: drop the batch padding, as evaluation does (engine.data.split_outputs)
                    logits[name][batch[i][1]] = values[k][:lengths[i]] if token_level else values[k]
        return {n: (encoded[n][0], encoded[n][1], logits[n]) for n in encoded}

    def predict(self, rows: Sequence[dict[str, Any]], where: str = "rows",
                lines: Sequence[int] | None = None) -> list[Any]:
        """Each row's prediction (the task's own decoding: label name, score, tags, answer span...), in order."""
        result: list[Any] = [None] * len(rows)
        for name, (positions, split, logits) in self.outputs(rows, where, lines).items():
            preds = self.tasks[name].task.predict(logits, split)
            for pos, pred in zip(positions, preds):
                result[pos] = pred
        return result


# ---- CLI ----------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m megaprompt.serve",
                       description="Predict jsonl rows of several tasks with one backbone and their exports.")
    p.add_argument("--export", action="append", required=True, metavar="DIR",
                   help="an export directory (repeat for more; every task of every export is served)")
    p.add_argument("--input", required=True, help="jsonl rows {\"task\": ..., <the task's fields> | text, text_pair}")
    p.add_argument("--output", required=True, help="jsonl predictions, one per input row, in input order")
    p.add_argument("--backbone", default=None, help="the backbone (default: the one the exports record)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--batch_size", type=int, default=32, help="rows per forward (mixed tasks)")
    p.add_argument("--max_tokens", type=int, default=None, help="padded tokens per forward (default: no bound)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return p


def _read_rows(path: str) -> tuple[list[Any], list[int]]:
    from megaprompt.files import read_text

    try:
        text = read_text(path)
    except (OSError, ValueError) as err:
        raise UserError(f"--input {path}: {one_line(err)}") from None
    rows, lines = [], []
    for n, line in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: malformed JSON ({err.msg})") from None
        lines.append(n)
    if not rows:
        raise UserError(f"--input {path}: no rows")
    return rows, lines


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv: Sequence[str] | None = None) -> int:
    import transformers

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    hf = transformers.utils.logging
    verbosity, bars = hf.get_verbosity(), hf.is_progress_bar_enabled()
    hf.disable_progress_bar()           # stderr keeps one line per error; weight loading bars say nothing useful
    hf.set_verbosity_error()
    try:
        return _serve(args)
    finally:
        hf.set_verbosity(verbosity)
        if bars:
            hf.enable_progress_bar()


def _serve(args: argparse.Namespace) -> int:
    from megaprompt.files import atomic_write_text

    try:
        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise UserError(f"--output {out} exists: pass --overwrite to replace it")
        rows, lines = _read_rows(args.input)
        server = Server(args.export, args.backbone, args.device, args.precision, args.batch_size, args.max_tokens)
        preds = server.predict(rows, args.input, lines)
        text = "".join(json.dumps({"task": r["task"], **({"idx": r["idx"]} if "idx" in r else {}),
                                   "prediction": _jsonable(p)}) + "\n" for r, p in zip(rows, preds))
        atomic_write_text(out, text)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {}
    for r in rows:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    logger.info("served %d rows (%s) with %d task(s) on one backbone -> %s", len(rows),
                ", ".join(f"{k} {v}" for k, v in counts.items()), len(server.tasks), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
