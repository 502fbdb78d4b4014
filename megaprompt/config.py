"""Run configuration: typed dataclasses, a YAML recipe, then CLI flags (later wins).

Every field has one flat name that is both its CLI flag (``--lr``) and its recipe key (``lr:``), so a
recipe is just a saved command line. Unknown flags or keys fail with the closest valid name. The resolved
config is written to ``<output_dir>/config.yaml`` by the engine.
"""
from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from megaprompt.prompts.config import PromptConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HEAD_TYPES = ("linear", "verbalizer")


@dataclass
class DataConfig:
    task: str = "demo"
    """Task name (see megaprompt.tasks); ``demo`` is the built-in data set and needs no data_dir."""
    data_dir: str | None = None
    """One task's folder, as officially distributed (None: built-in data or a hub dataset when online)."""
    max_seq_len: int = 128
    """Real-token budget per sequence (pt2 prefixes take no positions; lester prompts take prompt_len)."""
    max_train_examples: int = 0
    """Use only the first N training examples (0 = all): smoke runs and tests."""
    max_eval_examples: int = 0
    """Use only the first N dev examples (0 = all)."""

    def __post_init__(self) -> None:
        if self.max_seq_len < 8:
            raise ValueError(f"max_seq_len={self.max_seq_len}: expected >= 8")
        if self.max_train_examples < 0 or self.max_eval_examples < 0:
            raise ValueError("max_train_examples / max_eval_examples: expected >= 0")


@dataclass
class TrainConfig:
    output_dir: str = "runs/demo"
    ds_config: str = "ds_configs/zero3.json"
    """DeepSpeed JSON holding only ZeRO / offload / precision settings; the rest is filled from here."""
    max_steps: int = 0
    """Optimizer steps to run; 0 = derive from epochs."""
    epochs: float = 3.0
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    """Linear warmup over this fraction of steps, then linear decay to 0."""
    batch_size: int = 16
    """Per-device micro batch."""
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    head_dropout: float = 0.1
    hidden_dropout: float = -1.0
    """Override the backbone's ``hidden_dropout_prob`` (the official P-tuning-v2 scripts set 0.1/0.2);
    -1 keeps the checkpoint's value. Families without that knob (llama, qwen, ...) ignore it."""
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1
    """With gradient_checkpointing: recompute every N-th layer only (2 = half the recompute, ~1.3x the
    un-checkpointed step instead of ~1.55x, for half the activation saving)."""
    eval_every: int = 0
    """Evaluate every N steps (0 = once per epoch); always at the end."""
    eval_batch_size: int = 0
    """0 = 2 x batch_size."""
    save_every: int = 0
    """Save a resume checkpoint every N steps (0 = only at preemption and the end)."""
    keep_checkpoints: int = 2
    early_stopping: int = 0
    """Stop after N evaluations without a new best dev metric (0 = off)."""
    resume: str = "auto"
    """auto: newest complete checkpoint in output_dir if any; none: start fresh; or a checkpoint path."""
    seed: int = 42
    precision: str = "auto"
    """auto: bf16 on GPUs that support it, else fp32."""
    log_every: int = 10
    max_requeues: int = 3
    """Slurm: requeue on preemption at most this many times."""
    stop_at_step: int = 0
    """End this job after step N with a resume checkpoint, as a preemption would (0 = off); the schedule
    still spans the whole run, so a later ``--resume auto`` continues exactly. For time-boxed jobs."""
    head_type: str = "linear"
    """linear: the paper's randomly initialised linear head; verbalizer: the backbone's frozen MLM head scores
    label words at an appended [MASK] (classification tasks, encoders with an MLM head; the ablation)."""
    label_words: str = ""
    """Verbalizer only: comma-separated, one word per label in label order (default: the label names)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("max_steps", "eval_every", "save_every", "early_stopping", "eval_batch_size", "log_every",
                     "stop_at_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ValueError("set max_steps > 0 or epochs > 0")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected > 0")
        if not (self.hidden_dropout == -1.0 or 0 <= self.hidden_dropout < 1):
            raise ValueError(f"hidden_dropout={self.hidden_dropout}: expected -1 (keep) or a value in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio}: expected in [0, 1)")
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"head_type={self.head_type!r}: expected one of {', '.join(HEAD_TYPES)}")
        if self.label_words and self.head_type != "verbalizer":
            raise ValueError("label_words only applies to --head_type verbalizer")
        if self.label_words and not all(w.strip() for w in self.label_words.split(",")):
            raise ValueError(f"label_words={self.label_words!r}: expected comma-separated non-empty words")
        if self.resume not in ("auto", "none") and not os.path.isdir(self.resume):
            raise ValueError(f"resume={self.resume!r}: expected auto, none or an existing checkpoint directory")


@dataclass
class RunConfig:
    backbone: str = "minilm"
    """HF hub name, local path, ``minilm`` (bundled pretrained all-MiniLM-L6-v2) or tiny-bert/-deberta/-llama."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backbone": self.backbone}
        for section in (self.prompt, self.data, self.train):
            out.update(asdict(section))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.flat(), sort_keys=True)


_SECTIONS = {"prompt": PromptConfig, "data": DataConfig, "train": TrainConfig}


def _field_types() -> dict[str, tuple[str | None, Any]]:
    """flat name -> (section or None, default value) for every config field."""
    out: dict[str, tuple[str | None, Any]] = {"backbone": (None, RunConfig.backbone)}
    for sec, cls in _SECTIONS.items():
        for f in fields(cls):
            out[f.name] = (sec, cls.__dataclass_fields__[f.name].default)
    return out


FIELDS = _field_types()


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(name: str, value: Any, where: str) -> Any:
    default = FIELDS[name][1]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and default is None):
        return None
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            return float(value)
        if isinstance(value, list) and name == "prompt_layers":
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__ if default is not None else "str"
        raise ValueError(f"{where}: {name}={value!r}: expected {kind}") from None


def build_config(values: dict[str, Any]) -> RunConfig:
    parts: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
    backbone = values.get("backbone", RunConfig.backbone)
    for name, value in values.items():
        sec = FIELDS[name][0]
        if sec is not None:
            parts[sec][name] = value
    return RunConfig(backbone=backbone, prompt=PromptConfig(**parts["prompt"]), data=DataConfig(**parts["data"]),
                     train=TrainConfig(**parts["train"]))


def load_recipe(path: str) -> dict[str, Any]:
    """Flat key: value YAML; errors name the file and the offending key."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--recipe {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise ValueError(f"{path}: unknown key {key!r}{_suggest(str(key), list(FIELDS))}")
        out[key] = _coerce(key, value, path)
    return out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megaprompt.train", description="P-Tuning v2 on a frozen backbone with "
                                "DeepSpeed.", argument_default=argparse.SUPPRESS, allow_abbrev=False)
    p.add_argument("--recipe", help="YAML recipe of flat config keys; CLI flags override it")
    p.add_argument("--local_rank", type=int, help="set by the deepspeed launcher (ignored; LOCAL_RANK is read)")
    for name, (_, default) in FIELDS.items():
        flags = [f"--{name}"] + (["--deepspeed"] if name == "ds_config" else [])
        if isinstance(default, bool):
            p.add_argument(*flags, nargs="?", const="true", metavar="BOOL")
        else:
            p.add_argument(*flags, metavar=type(default).__name__.upper() if default is not None else "STR")
    return p


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """defaults < recipe < explicit CLI flags. Raises SystemExit(2) with a one-line message on bad input."""
    parser = make_parser()
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        name = flag.lstrip("-").split("=")[0]
        parser.error(f"unknown flag {flag}{_suggest(name, list(FIELDS) + ['recipe'])}")
    given = vars(ns)
    values: dict[str, Any] = {}
    try:
        if "recipe" in given:
            values.update(load_recipe(given.pop("recipe")))
        given.pop("local_rank", None)
        for name, value in given.items():
            values[name] = _coerce(name, value, f"--{name}")
        return build_config(values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable
