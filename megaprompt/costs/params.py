"""Exact parameter counts of a prompted backbone, from the real ``PromptedModel`` built on the meta device.

``megaprompt-param-ratio`` (``tools/param_ratio.py``) answers "how many parameters does method X train on
backbone Y, and what fraction is that". The counts are not a formula: the tool builds the very module that
training builds - ``AutoModel.from_config`` + ``build_model`` - inside ``torch.device("meta")``, so no
weights are allocated or downloaded, then counts with ``megaprompt.accounting.count_parameters`` (identity
de-duplication, ``ds_numel``-aware). A test builds tiny backbones both on meta and on CPU and compares.

Why not DeepSpeed's ``model_to_params``: it de-duplicates shared weights by ``data_ptr()``, and every meta
tensor has ``data_ptr() == 0``, so on a meta model it keeps a single parameter (see tests/costs).

Trainable parameters are affine in ``prompt_len`` for a fixed head: ``T(P) = a*P + c`` (pt2 table:
``a = Lp*2*kv_heads*head_dim``; mlp reparam: ``a = hidden`` and c holds the MLP; lester: ``a = hidden``;
c always holds the head). Frozen parameters F do not depend on P, so the prompt length that reaches a
trainable ratio r solves ``T/(T+F) = r`` exactly: ``P = (r*F/(1-r) - c) / a`` (``--table``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import torch
import torch.nn as nn

from megaprompt.cli import ArgumentParser
from megaprompt.errors import UserError
from megaprompt.accounting import ParamCount, count_parameters, numel
from megaprompt.backbones import SUPPORTED_MODEL_TYPES
from megaprompt.costs.presets import PRESETS, preset_names
from megaprompt.prompts.config import METHODS, PROMPT_KINDS, REPARAMS, PromptConfig

RATIOS = (Fraction(1, 1000), Fraction(3, 100))   # the paper's "0.1%-3% of the parameters"


class CostInputError(UserError):
    """Bad user input for the cost tools; the CLIs turn it into a one-line argparse error."""


# ---- backbones -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backbone:
    """A backbone to cost: its transformers config and how ``AutoModel`` builds it."""

    name: str
    config: Any
    pooler: bool = True
    note: str = ""

    @property
    def model_type(self) -> str:
        return self.config.model_type


def _config_from_dict(d: dict[str, Any], where: str) -> Any:
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise CostInputError(f"{where}: no model_type in the config")
    _check_type(model_type, where)
    for k in ("architectures", "transformers_version", "auto_map", "_name_or_path", "torch_dtype", "dtype"):
        d.pop(k, None)
    return AutoConfig.for_model(model_type, **d)


def _check_type(model_type: str, where: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CostInputError(f"{where}: model_type {model_type!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def resolve_backbone(name: str) -> Backbone:
    """A preset name, a tiny test config (tiny-bert, ...), a ``config.json`` file or a model directory."""
    from megaprompt.backbones.load import TINY_CONFIGS

    if name in PRESETS:
        p = PRESETS[name]
        return Backbone(name, _config_from_dict({"model_type": p.model_type, **p.config}, name), p.pooler, p.note)
    if name in TINY_CONFIGS:
        return Backbone(name, _config_from_dict(TINY_CONFIGS[name], name))
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise CostInputError(f"--backbone {name!r}: directory has no config.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as err:
            raise CostInputError(f"--backbone {name!r}: cannot read a JSON config: {err}") from None
        return Backbone(name, _config_from_dict(d, name))
    raise CostInputError(f"unknown backbone {name!r}: not a preset, tiny config, config.json or directory; "
                         f"presets: {', '.join(preset_names())}; tiny: {', '.join(TINY_CONFIGS)}")


def build_backbone(bb: Backbone, device: str | torch.device = "meta") -> nn.Module:
    """The bare backbone exactly as training builds it (``AutoModel.from_config``), on ``device``."""
    from transformers import AutoModel

    kw = {} if bb.pooler else {"add_pooling_layer": False}
    with torch.device(device):
        return AutoModel.from_config(bb.config, **kw)


def make_prompt_config(method: str = "pt2", prompt_len: int = 16, reparam: str = "none", mlp_hidden: int = 512,
                       prompt_layers: str = "all") -> PromptConfig:
    try:
        return PromptConfig(method=method, prompt_len=prompt_len, reparam=reparam, mlp_hidden=mlp_hidden,
                            prompt_layers=prompt_layers)
    except ValueError as err:
        raise CostInputError(str(err)) from None


def build_prompted(bb: Backbone, prompt_cfg: PromptConfig, head_kind: str = "cls", num_labels: int = 2,
                   device: str | torch.device = "meta") -> nn.Module:
    """The real ``PromptedModel`` (backbone + prompt + head) on ``device`` - meta by default."""
    from megaprompt.model import build_model

    backbone = build_backbone(bb, device)
    try:
        with torch.device(device):
            return build_model(backbone, prompt_cfg, head_kind, num_labels, name=bb.name)
    except ValueError as err:  # e.g. prompt_layers out of range for this depth, bad head kind
        raise CostInputError(str(err)) from None


def count(bb: Backbone | str, method: str = "pt2", prompt_len: int = 16, reparam: str = "none",
          mlp_hidden: int = 512, prompt_layers: str = "all", head_kind: str = "cls", num_labels: int = 2,
          device: str = "meta") -> ParamCount:
    bb = resolve_backbone(bb) if isinstance(bb, str) else bb
    cfg = make_prompt_config(method, prompt_len, reparam, mlp_hidden, prompt_layers)
    return count_parameters(build_prompted(bb, cfg, head_kind, num_labels, device))


# ---- shape facts the memory estimator needs ---------------------------------------------------------------
@dataclass
class ModelFacts:
    """Per-parameter sizes and shape facts of one built model (meta is fine)."""

    name: str
    trainable: list[int]                 # numel of every trainable parameter
    frozen: list[int]
    largest_module: int                  # most parameters held directly by one module (ZeRO-3 gathers modules)
    largest_trainable_module: int
    num_layers: int
    hidden_size: int

    @property
    def n_trainable(self) -> int:
        return sum(self.trainable)

    @property
    def n_frozen(self) -> int:
        return sum(self.frozen)

    @property
    def n_total(self) -> int:
        return self.n_trainable + self.n_frozen


def model_facts(model: nn.Module, name: str = "") -> ModelFacts:
    trainable: list[int] = []
    frozen: list[int] = []
    for p in model.parameters():  # identity de-duplicated: tied weights once
        (trainable if p.requires_grad else frozen).append(numel(p))
    largest = largest_t = 0
    for m in model.modules():
        ps = list(m.parameters(recurse=False))
        largest = max(largest, sum(numel(p) for p in ps))
        largest_t = max(largest_t, sum(numel(p) for p in ps if p.requires_grad))
    spec = model.spec
    return ModelFacts(name, trainable, frozen, largest, largest_t, spec.num_layers, spec.hidden_size)


# ---- ratio table ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Affine:
    """Trainable params ``a*P + c`` and the P-independent frozen count F."""

    a: int
    c: int
    frozen: int

    def prompt_len_for(self, ratio: Fraction) -> Fraction:
        """The exact (real) prompt length giving ``ratio`` trainable."""
        return (ratio * self.frozen / (1 - ratio) - self.c) / Fraction(self.a)

    def ratio_at(self, p: int) -> float:
        t = self.a * p + self.c
        return t / (t + self.frozen)


def affine(bb: Backbone, method: str = "pt2", reparam: str = "none", mlp_hidden: int = 512,
           prompt_layers: str = "all", head_kind: str = "cls", num_labels: int = 2) -> Affine:
    if method not in PROMPT_KINDS:
        raise CostInputError(f"--table needs a prompt method ({' or '.join(PROMPT_KINDS)}), not {method!r}: "
                             f"the trainable count of {method!r} does not depend on prompt_len")
    c1, c2 = (count(bb, method, p, reparam, mlp_hidden, prompt_layers, head_kind, num_labels) for p in (1, 2))
    if c1.frozen != c2.frozen:
        raise AssertionError("frozen count depends on prompt_len")
    a = c2.trainable - c1.trainable
    return Affine(a, c1.trainable - a, c1.frozen)


def table_rows(names: Sequence[str], method: str = "pt2", reparam: str = "none", mlp_hidden: int = 512,
               prompt_layers: str = "all", head_kind: str = "cls", num_labels: int = 2) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        bb = resolve_backbone(name)
        f = affine(bb, method, reparam, mlp_hidden, prompt_layers, head_kind, num_labels)
        row: dict[str, Any] = {"backbone": name, "model_type": bb.model_type, "frozen_params": f.frozen,
                               "trainable_per_prompt_token": f.a, "trainable_fixed": f.c}
        for r in RATIOS:
            exact = f.prompt_len_for(r)
            smallest = max(1, math.ceil(exact))     # smallest integer P whose ratio is >= r
            key = f"{float(r) * 100:g}%"
            row[f"prompt_len_{key}_exact"] = float(exact)
            row[f"prompt_len_{key}"] = smallest
            row[f"ratio_at_{key}"] = f.ratio_at(smallest)
        rows.append(row)
    return rows


# ---- CLI --------------------------------------------------------------------------------------------------
def human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="megaprompt-param-ratio",
        description="Exact frozen/trainable parameter counts of a prompted backbone (built on the meta device; "
                    "nothing is downloaded).")
    ap.add_argument("--backbone", action="append", default=None,
                    help="preset name, tiny-bert/tiny-deberta/tiny-llama, a config.json or a model directory; "
                         "repeatable. --list shows the presets.")
    ap.add_argument("--method", default="pt2", choices=METHODS)
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--reparam", default="none", choices=REPARAMS)
    ap.add_argument("--mlp_hidden", type=int, default=512)
    ap.add_argument("--prompt_layers", default="all", help="all, last:N, first:N or 0,2,5")
    ap.add_argument("--head", default="cls", help="head kind (cls, reg, mc, tag, span)")
    ap.add_argument("--num_labels", type=int, default=2)
    ap.add_argument("--table", action="store_true",
                    help="for each backbone (default: every preset) the prompt lengths giving 0.1%% and 3%% "
                         "trainable parameters")
    ap.add_argument("--list", action="store_true", help="list the presets and exit")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    return ap


def _print_csv(rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    sys.stdout.write(buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.list:
        for name, p in PRESETS.items():
            print(f"{name:20s} {p.model_type:11s} {p.source}{'  [' + p.note + ']' if p.note else ''}")
        return 0
    if args.num_labels < 1:
        ap.error(f"--num_labels {args.num_labels}: expected >= 1")
    try:
        if args.table:
            names = args.backbone or preset_names()
            rows = table_rows(names, args.method, args.reparam, args.mlp_hidden, args.prompt_layers, args.head,
                              args.num_labels)
            if args.json:
                print(json.dumps(rows, indent=2))
            elif args.csv:
                _print_csv(rows)
            else:
                print(f"method={args.method} reparam={args.reparam} prompt_layers={args.prompt_layers} "
                      f"head={args.head}({args.num_labels}); P = prompt length, exact real solution -> smallest "
                      f"integer")
                print(f"{'backbone':20s} {'frozen':>9s} {'/token':>9s} {'P @ 0.1%':>18s} {'P @ 3%':>20s}")
                for r in rows:
                    print(f"{r['backbone']:20s} {human(r['frozen_params']):>9s} "
                          f"{human(r['trainable_per_prompt_token']):>9s} "
                          f"{r['prompt_len_0.1%_exact']:>10.2f} -> {r['prompt_len_0.1%']:<5d} "
                          f"{r['prompt_len_3%_exact']:>11.2f} -> {r['prompt_len_3%']:<6d}")
            return 0
        if not args.backbone:
            ap.error("--backbone is required (or --table / --list)")
        rows = []
        for name in args.backbone:
            c = count(name, args.method, args.prompt_len, args.reparam, args.mlp_hidden, args.prompt_layers,
                      args.head, args.num_labels)
            rows.append({"backbone": name, "method": args.method,
                         "prompt_len": args.prompt_len if args.method in PROMPT_KINDS else 0,
                         "frozen_params": c.frozen, "trainable_params": c.trainable, "total_params": c.total,
                         "trainable_ratio": c.ratio})
    except CostInputError as err:
        ap.error(str(err))
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    elif args.csv:
        _print_csv(rows)
    else:
        print(f"{'backbone':20s} {'method':6s} {'P':>4s} {'frozen':>15s} {'trainable':>13s} {'total':>15s} "
              f"{'ratio':>9s}")
        for r in rows:
            print(f"{r['backbone']:20s} {r['method']:6s} {r['prompt_len']:>4d} {r['frozen_params']:>15,d} "
                  f"{r['trainable_params']:>13,d} {r['total_params']:>15,d} {r['trainable_ratio'] * 100:>8.4f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
