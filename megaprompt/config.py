"""Run configuration: typed dataclasses, a YAML recipe, then CLI flags (later wins).

Every field has one flat name that is both its CLI flag (``--lr``) and its recipe key (``lr:``), so a
recipe is just a saved command line. Unknown flags or keys fail with the closest valid name. The resolved
config is written to ``<output_dir>/config.yaml`` by the engine.
"""
from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from megaprompt.cli import ArgumentParser
from megaprompt.files import read_yaml
from megaprompt.options import GROUPS, FieldError, check_fields, help_text, opt
from megaprompt.prompts.config import PROMPT_KINDS, PromptConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HEAD_TYPES = ("linear", "verbalizer")
SHARINGS = ("shared", "shared+task")
MIXINGS = ("proportional", "temperature", "round_robin")
ENTRY_KEYS = ("data_dir", "max_seq_len", "max_train_examples")


@dataclass(frozen=True)
class TaskEntry:
    """One task of a run: its name, data folder and per-task limits (from --task/--data_dir or a recipe's
    ``tasks:`` list)."""

    name: str
    data_dir: str | None = None
    max_seq_len: int = 128
    max_train_examples: int = 0

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise FieldError("task", f"task={self.name!r}: expected a task name (letters, digits, _ -)")
        if self.max_seq_len < 8:
            raise FieldError("task_settings", f"{self.name}: max_seq_len={self.max_seq_len}: expected >= 8")
        if self.max_train_examples < 0:
            raise FieldError("task_settings", f"{self.name}: max_train_examples={self.max_train_examples}: expected >= 0")


def _pairs(text: str, key: str) -> dict[str, str]:
    """``a=x,b=y`` -> {a: x, b: y}; one-line errors name ``key``."""
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise FieldError(key, f"{key}={text!r}: expected NAME=VALUE pairs separated by commas")
        out[name.strip()] = value.strip()
    return out


@dataclass
class DataConfig:
    task: str = opt("demo", "data")
    """Task name (see megaprompt.tasks), or a comma list for multi-task training (``rte,cb,copa,wsc``);
    ``demo`` is the built-in data set and needs no data_dir."""
    data_dir: str | None = opt(None, "data")
    """One task's folder, as officially distributed (None: built-in data or a hub dataset when online); with
    several tasks, ``NAME=PATH`` pairs (``rte=data/RTE,cb=data/CB``)."""
    task_settings: str = opt("", "data")
    """Per-task overrides, ``NAME:key=value,...;NAME:...`` with keys max_seq_len, max_train_examples (a recipe's
    ``tasks:`` list is stored here)."""
    max_seq_len: int = opt(128, "data", ge=8)
    """Real-token budget per sequence (pt2 prefixes take no positions; lester prompts take prompt_len)."""
    max_train_examples: int = opt(0, "data", ge=0)
    """Use only the first N training examples (0 = all): smoke runs and tests."""
    max_eval_examples: int = opt(0, "data", ge=0)
    """Use only the first N dev examples (0 = all)."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.entries()            # every per-task value checked now

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.task.split(",")]

    def entries(self) -> list[TaskEntry]:
        """The run's tasks, in order, with their data folder and limits."""
        names = self.task_names
        if len(set(names)) != len(names) or not all(names):
            raise FieldError("task", f"task={self.task!r}: expected distinct names separated by commas")
        dirs: dict[str, str] = {}
        if self.data_dir is not None:
            if len(names) > 1 or "=" in self.data_dir:
                dirs = _pairs(self.data_dir, "data_dir")
                unknown = [n for n in dirs if n not in names]
                if unknown:
                    raise FieldError("data_dir", f"data_dir names task {unknown[0]!r}, which is not in "
                                                 f"task={self.task!r}")
            else:
                dirs = {names[0]: self.data_dir}
        settings: dict[str, dict[str, int]] = {}
        for part in filter(None, (p.strip() for p in self.task_settings.split(";"))):
            name, sep, rest = part.partition(":")
            if not sep or name.strip() not in names:
                raise FieldError("task_settings", f"task_settings part {part!r}: expected NAME:key=value with NAME "
                                                  f"one of {', '.join(names)}")
            for key, value in _pairs(rest, "task_settings").items():
                if key not in ENTRY_KEYS[1:]:
                    raise FieldError("task_settings", f"task_settings key {key!r}: expected one of "
                                                      f"{', '.join(ENTRY_KEYS[1:])}")
                try:
                    settings.setdefault(name.strip(), {})[key] = int(value)
                except ValueError:
                    raise FieldError("task_settings", f"task_settings {name}:{key}={value!r}: expected int") from None
        return [TaskEntry(n, dirs.get(n), **{"max_seq_len": self.max_seq_len,
                                            "max_train_examples": self.max_train_examples, **settings.get(n, {})})
                for n in names]


@dataclass
class TrainConfig:
    output_dir: str = opt("", "outputs", identity=False)
    """Run directory: config, log, checkpoints, export, metrics, TensorBoard ('' = runs/<task>-<method>-<backbone>)."""
    ds_config: str = opt("ds_configs/zero3.json", "DeepSpeed", identity=False)
    """DeepSpeed JSON holding only ZeRO / offload / precision settings; the rest is filled from here."""
    max_steps: int = opt(0, "training", ge=0)
    """Optimizer steps to run; 0 = derive from epochs."""
    epochs: float = opt(3.0, "training", ge=0)
    """Passes over the training set (used when max_steps is 0)."""
    lr: float = opt(1e-2, "training", gt=0)
    """Peak learning rate (prompt methods want 5e-3..3e-2, fine-tuning 1e-5..1e-4)."""
    weight_decay: float = opt(0.0, "training", ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = opt(0.1, "training", ge=0, lt=1)
    """Linear warmup over this fraction of steps, then linear decay to 0."""
    batch_size: int = opt(16, "training", ge=1)
    """Per-device micro batch."""
    grad_accum: int = opt(1, "training", ge=1)
    """Micro batches per optimizer step (global batch = batch_size x grad_accum x ranks)."""
    max_grad_norm: float = opt(1.0, "training", ge=0)
    """Gradient clipping norm (0 = no clipping)."""
    head_dropout: float = opt(0.1, "model and prompt", ge=0, lt=1)
    """Dropout before the task head."""
    hidden_dropout: float = opt(-1.0, "model and prompt")
    """Override the backbone's ``hidden_dropout_prob`` (the official P-tuning-v2 scripts set 0.1/0.2);
    -1 keeps the checkpoint's value. Families without that knob (llama, qwen, ...) ignore it."""
    gradient_checkpointing: bool = opt(False, "DeepSpeed", identity=False)
    """Activation checkpointing of the backbone's layers (less memory, about one more forward pass)."""
    checkpoint_every: int = opt(1, "DeepSpeed", ge=1, identity=False)
    """With gradient_checkpointing: recompute every N-th layer only (2 = half the recompute, ~1.3x the
    un-checkpointed step instead of ~1.55x, for half the activation saving)."""
    eval_every: int = opt(0, "training", ge=0)
    """Evaluate every N steps (0 = once per epoch); always at the end."""
    eval_batch_size: int = opt(0, "training", ge=0, identity=False)
    """0 = 2 x batch_size."""
    save_every: int = opt(0, "outputs", ge=0, identity=False)
    """Save a resume checkpoint every N steps (0 = only at preemption and the end)."""
    keep_checkpoints: int = opt(2, "outputs", ge=1, identity=False)
    """Resume checkpoints kept (the newest of this run's own history)."""
    early_stopping: int = opt(0, "training", ge=0)
    """Stop after N evaluations without a new best dev metric (0 = off)."""
    resume: str = opt("auto", "outputs", identity=False)
    """auto: newest complete checkpoint of this run in output_dir, if any; none: start fresh (an earlier run's
    outputs are moved to previous-<time>/); or a checkpoint path (a fork: later checkpoints are moved aside)."""
    seed: int = opt(42, "training", ge=0, lt=2**32)
    """Seed of the prompt/head init, dropout and the data order."""
    precision: str = opt("auto", "DeepSpeed", choices=PRECISIONS)
    """auto: bf16 on GPUs that support it, else fp32."""
    log_every: int = opt(10, "outputs", ge=1, identity=False)
    """Log loss, lr and throughput every N steps."""
    max_requeues: int = opt(3, "outputs", ge=0, identity=False)
    """Slurm: requeue on preemption at most this many times."""
    stop_at_step: int = opt(0, "outputs", ge=0, identity=False)
    """End this job after step N with a resume checkpoint, as a preemption would (0 = off); the schedule
    still spans the whole run, so a later ``--resume auto`` continues exactly. For time-boxed jobs."""
    head_type: str = opt("linear", "model and prompt", choices=HEAD_TYPES)
    """linear: the paper's randomly initialised linear head; verbalizer: the backbone's frozen MLM head scores
    label words at an appended [MASK] (classification tasks, encoders with an MLM head; the ablation)."""
    label_words: str = opt("", "model and prompt")
    """Verbalizer only: comma-separated, one word per label in label order (default: the label names)."""
    prompt_sharing: str = opt("shared", "multi-task", choices=SHARINGS)
    """shared: one prompt for every task, a head per task (the paper's MPT-2); shared+task: plus a per-task
    prompt after the shared one."""
    task_prompt_len: int = opt(0, "multi-task", ge=0)
    """Length of each per-task prompt with shared+task (0 = prompt_len)."""
    mixing: str = opt("proportional", "multi-task", choices=MIXINGS)
    """Which task each micro-step trains: proportional to the training set sizes, temperature-scaled
    (size^(1/T)), or round_robin. Every rank runs the same task at each micro-step."""
    mixing_temperature: float = opt(2.0, "multi-task", ge=1)
    """T of temperature mixing (1 = proportional; larger flattens towards uniform)."""
    select_on: str = opt("mean", "multi-task")
    """Best checkpoint by the mean of the tasks' primary dev metrics, or by one task's (its name)."""
    init_from: str = opt("", "multi-task")
    """An export directory whose prompts and heads (those this run shares by name) initialise the run: the
    multi-task -> single-task continuation. Its prompts are tables, so use --reparam none."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_steps == 0 and self.epochs <= 0:
            raise FieldError("epochs", "set max_steps > 0 or epochs > 0")
        if not (self.hidden_dropout == -1.0 or 0 <= self.hidden_dropout < 1):
            raise FieldError("hidden_dropout",
                             f"hidden_dropout={self.hidden_dropout}: expected -1 (keep) or a value in [0, 1)")
        if self.label_words and self.head_type != "verbalizer":
            raise FieldError("label_words", "label_words only applies to --head_type verbalizer")
        if self.label_words and not all(w.strip() for w in self.label_words.split(",")):
            raise FieldError("label_words",
                             f"label_words={self.label_words!r}: expected comma-separated non-empty words")
        if self.init_from and not os.path.isdir(self.init_from):
            raise FieldError("init_from", f"init_from={self.init_from!r}: expected an existing export directory")
        if self.resume not in ("auto", "none") and not os.path.isdir(self.resume):
            raise FieldError("resume",
                             f"resume={self.resume!r}: expected auto, none or an existing checkpoint directory")


def default_output_dir(task: str, method: str, backbone: str) -> str:
    """``runs/<task>-<method>-<backbone>``: distinct runs get distinct directories by default (a local path
    or hub name contributes its last component, e.g. ``meta-llama/Llama-2-7b-hf`` -> ``Llama-2-7b-hf``)."""
    name = Path(backbone.rstrip("/\\")).name or "backbone"
    return str(Path("runs") / f"{task}-{method}-{name}")


@dataclass
class RunConfig:
    backbone: str = opt("minilm", "model and prompt")
    """HF hub name, local path, ``minilm`` (bundled pretrained all-MiniLM-L6-v2) or tiny-bert/-deberta/-llama."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        names = self.data.task_names
        if self.train.select_on != "mean" and self.train.select_on not in names:
            raise FieldError("select_on", f"select_on={self.train.select_on!r}: expected mean or one of "
                                          f"{', '.join(names)}")
        if self.train.prompt_sharing != "shared" and not self.prompt.has_prompt:
            raise FieldError("prompt_sharing", f"prompt_sharing={self.train.prompt_sharing!r} needs a prompt "
                                               f"method ({', '.join(PROMPT_KINDS)}), not {self.prompt.method}")
        if self.train.init_from and self.prompt.reparam != "none" and self.prompt.has_prompt:
            raise FieldError("init_from", "init_from loads materialised prompt tables: use --reparam none")
        if not self.train.output_dir:
            self.train.output_dir = default_output_dir("+".join(names), self.prompt.method, self.backbone)

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backbone": self.backbone}
        for section in (self.prompt, self.data, self.train):
            out.update(asdict(section))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.flat(), sort_keys=True)


_SECTIONS = {"prompt": PromptConfig, "data": DataConfig, "train": TrainConfig}


def _field_defs() -> dict[str, tuple[str | None, type, Field]]:
    """flat name -> (section or None, owning class, dataclass Field) for every config field."""
    out: dict[str, tuple[str | None, type, Field]] = {"backbone": (None, RunConfig,
                                                                   RunConfig.__dataclass_fields__["backbone"])}
    for sec, cls in _SECTIONS.items():
        for f in fields(cls):
            out[f.name] = (sec, cls, f)
    return out


FIELD_DEFS = _field_defs()
FIELDS: dict[str, tuple[str | None, Any]] = {n: (sec, f.default) for n, (sec, _, f) in FIELD_DEFS.items()}


def identity_keys() -> list[str]:
    """The flat fields that change what a run computes (declared with ``identity=True``, the default)."""
    return [n for n, (_, _, f) in FIELD_DEFS.items() if f.metadata.get("identity", True)]


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(name: str, value: Any, where: str) -> Any:
    default = FIELDS[name][1]
    if default is None and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    try:
        if value is None or isinstance(value, (dict, list)) and name != "prompt_layers":
            raise ValueError
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, list):   # prompt_layers: [0, 3, 5]
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
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


def load_recipe(path: str, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Flat key: value YAML; errors name file:line and the offending key. ``sources`` (optional) receives
    ``key -> "file:line"`` so later validation errors can name where a value came from."""
    data, lines = read_yaml(path, "--recipe")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    out = {}
    if "tasks" in data:
        where = f"{path}:{lines.get('tasks', '?')}"
        data = {**{k: v for k, v in data.items() if k != "tasks"}, **_recipe_tasks(data["tasks"], where, data)}
        for key in ("task", "data_dir", "task_settings"):
            lines.setdefault(key, lines.get("tasks", 0))
    for key, value in data.items():
        where = f"{path}:{lines[str(key)]}" if str(key) in lines else str(path)
        if key not in FIELDS:
            raise ValueError(f"{where}: unknown key {key!r}{_suggest(str(key), list(FIELDS))}")
        out[key] = _coerce(key, value, where)
        if sources is not None:
            sources[key] = where
    return out


def _recipe_tasks(value: Any, where: str, data: dict[str, Any]) -> dict[str, Any]:
    """A recipe's ``tasks:`` list (names, or mappings with name, data_dir, max_seq_len, max_train_examples) as
    the flat keys task, data_dir and task_settings."""
    for key in ("task", "data_dir", "task_settings"):
        if key in data:
            raise ValueError(f"{where}: tasks: and {key}: both given; put {key} into the tasks: entries")
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: tasks: expected a non-empty list of task names or mappings")
    names, dirs, settings = [], [], []
    for i, item in enumerate(value):
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"{where}: tasks[{i}]: expected a task name or a mapping with name:")
        unknown = [k for k in item if k not in ("name",) + ENTRY_KEYS]
        if unknown:
            raise ValueError(f"{where}: tasks[{i}]: unknown key {unknown[0]!r}"
                             f"{_suggest(str(unknown[0]), list(ENTRY_KEYS))}")
        names.append(item["name"])
        if item.get("data_dir") is not None:
            dirs.append(f"{item['name']}={item['data_dir']}")
        sets = [f"{k}={item[k]}" for k in ENTRY_KEYS[1:] if k in item]
        if sets:
            settings.append(f"{item['name']}:{','.join(sets)}")
    out: dict[str, Any] = {"task": ",".join(names)}
    if dirs:
        out["data_dir"] = ",".join(dirs)
    if settings:
        out["task_settings"] = ";".join(settings)
    return out


def make_parser() -> ArgumentParser:
    """The training CLI: one flag per config field, grouped, each with its docstring, default and allowed values."""
    p = ArgumentParser(prog="megaprompt.train", description="P-Tuning v2 on a frozen backbone with DeepSpeed. "
                       "Every flag is also a recipe key; later wins: defaults < --recipe < flags.",
                       argument_default=argparse.SUPPRESS, allow_abbrev=False)
    p.add_argument("--recipe", help="YAML recipe of flat config keys (a saved command line); CLI flags override it")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)   # set by the deepspeed launcher
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for name, (_, cls, f) in FIELD_DEFS.items():
        flags = [f"--{name}"] + (["--deepspeed"] if name == "ds_config" else [])
        group = groups[f.metadata.get("group", "model and prompt")]
        text = help_text(cls, f).replace("%", "%%")
        if isinstance(f.default, bool):
            group.add_argument(*flags, nargs="?", const="true", metavar="BOOL", help=text)
        else:
            choices = f.metadata.get("choices")
            metavar = ("{" + ",".join(choices) + "}" if choices else
                       type(f.default).__name__.upper() if f.default is not None else "STR")
            group.add_argument(*flags, metavar=metavar, help=text)
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
    sources: dict[str, str] = {}
    try:
        if "recipe" in given:
            values.update(load_recipe(given.pop("recipe"), sources))
        given.pop("local_rank", None)
        for name, value in given.items():
            values[name] = _coerce(name, value, f"--{name}")
            sources[name] = f"--{name}"
        return build_config(values)
    except FieldError as err:
        parser.error(f"{sources.get(err.name, '--' + err.name)}: {err}")
    except ValueError as err:
        parser.error(str(err))
    raise AssertionError("unreachable")   # parser.error exits
