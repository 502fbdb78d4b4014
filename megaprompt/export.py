"""Prompt export: only the trained tensors (safetensors) plus a JSON that says what they belong to.

Layout of an export directory::

    prompt.safetensors   # every trainable tensor, keyed by its name in PromptedModel (prompt.*, head.*)
    prompt.json          # method, prompt config, head, backbone facts, label names, task

Loading checks the backbone facts first (model type, depth, width, kv heads, head_dim) and fails with one
line naming the mismatch. Nothing is ever unpickled. Writes go to a temporary directory that is renamed
into place, so a crash never leaves a half-written export.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from megaprompt.errors import UserError
from megaprompt.backbones import BackboneSpec
from megaprompt.files import atomic_dir_write, repair_dir
from megaprompt.prompts import PromptConfig

FORMAT = "megaprompt-export"
VERSION = 1
CHECKED_FACTS = ("model_type", "num_layers", "hidden_size", "num_kv_heads", "head_dim")


class ExportMismatch(UserError):
    pass


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors as contiguous CPU copies. Under ZeRO-3 call it inside ``GatheredParameters``."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_export(out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], spec: BackboneSpec,
                prompt_cfg: PromptConfig, head_kind: str, label_names: list[str], task: str = "",
                extra: dict[str, Any] | None = None) -> Path:
    meta = {
        "format": FORMAT, "version": VERSION, "task": task, "method": prompt_cfg.method,
        "prompt": asdict(prompt_cfg), "head": {"kind": head_kind, "num_labels": max(len(label_names), 1)},
        "backbone": spec.to_dict(), "label_names": list(label_names),
        "tensors": {k: list(v.shape) for k, v in tensors.items()}, **(extra or {}),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "prompt.safetensors"), metadata={"format": FORMAT})
        (tmp / "prompt.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_dir_write(out_dir, write)


def read_export(export_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors) of an export directory, with one-line errors for missing or foreign files."""
    d = Path(export_dir)
    repair_dir(d)          # an export swap that a crash interrupted: put the previous export back
    meta_path, tensor_path = d / "prompt.json", d / "prompt.safetensors"
    for p in (meta_path, tensor_path):
        if not p.is_file():
            raise ExportMismatch(f"{p}: missing (expected a megaprompt export directory)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportMismatch(f"{meta_path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ExportMismatch(f"{meta_path}: format={got!r}, expected {FORMAT!r}")
    for key, kind in (("backbone", dict), ("prompt", dict), ("head", dict), ("method", str)):
        if not isinstance(meta.get(key), kind):
            raise ExportMismatch(f"{meta_path}: {key!r} missing or not a {kind.__name__}")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as err:       # safetensors raises its own error types for foreign bytes
        raise ExportMismatch(f"{tensor_path}: not a safetensors file ({type(err).__name__})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportMismatch(f"{tensor_path}: tensor {name!r} holds NaN or Inf values (a diverged run?)")
    return meta, tensors


def check_backbone(meta: dict[str, Any], spec: BackboneSpec, where: str = "export") -> None:
    saved = meta["backbone"]
    for key in CHECKED_FACTS:
        if saved.get(key) != getattr(spec, key):
            raise ExportMismatch(f"{where}: backbone {key}={saved.get(key)!r} in the export but "
                                 f"{getattr(spec, key)!r} in the loaded backbone ({spec.name or spec.model_type})")


def load_export(model: torch.nn.Module, export_dir: str | os.PathLike) -> dict[str, Any]:
    """Load an export into a ``PromptedModel`` built with the same method/prompt/head; returns the meta."""
    meta, tensors = read_export(export_dir)
    check_backbone(meta, model.spec, str(export_dir))
    own = dict(model.named_parameters())
    for name, t in tensors.items():
        if name not in own:
            raise ExportMismatch(f"{export_dir}: tensor {name!r} has no counterpart in the model "
                                 f"(method {meta['method']} vs {model.prompt_cfg.method}?)")
        if tuple(own[name].shape) != tuple(t.shape) and getattr(own[name], "ds_shape", None) != t.shape:
            raise ExportMismatch(f"{export_dir}: tensor {name!r} has shape {tuple(t.shape)}, the model "
                                 f"expects {tuple(own[name].shape)}")
    missing = [n for n, p in own.items() if p.requires_grad and n not in tensors]
    if missing:
        raise ExportMismatch(f"{export_dir}: no tensor for trainable parameter {missing[0]!r}")
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t.to(own[name].dtype))
    return meta
