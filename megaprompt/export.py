"""Prompt export (layout v2): one safetensors + json per prompt and per task head, plus what they belong to.

Layout of an export directory::

    export.json                  # format, version 2, method, backbone facts + weight fingerprint, tasks, prompts
    prompts/<name>.safetensors   # "table" (P, Lp*2*K*d) for pt2 - an MLP reparameterization is materialised
    prompts/<name>.json          #   here, the resume checkpoint keeps the MLP - or "embedding" (P, E) for lester
    heads/<task>.safetensors     # the head's trained tensors (none for a frozen verbalizer)
    heads/<task>.json            # head kind, num_labels, label names, head_type, label words, route
    backbone.safetensors         # ft only: the fine-tuned backbone

Loading checks the backbone facts (model type, depth, width, kv heads, head_dim) and the fingerprint of its
weights (``backbones.fingerprint``) and fails with one line naming the mismatch, so a prompt trained on one
checkpoint is refused on another checkpoint of the same shape. Version-1 exports (``prompt.json`` +
``prompt.safetensors``) are read and converted in memory. Nothing is ever unpickled; NaN/Inf tensors are
refused. Writes go to a temporary directory that is renamed into place (``files.atomic_dir_write``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from megaprompt.backbones import BackboneSpec
from megaprompt.errors import UserError
from megaprompt.files import atomic_dir_write, repair_dir
from megaprompt.prompts.prefix import table_from_mlp

FORMAT = "megaprompt-export"
VERSION = 2
CHECKED_FACTS = ("model_type", "num_layers", "hidden_size", "num_kv_heads", "head_dim")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class ExportMismatch(UserError):
    pass


@dataclass
class ExportData:
    """An export read into memory: ``meta`` (export.json), prompts and heads by name, each (json, tensors)."""

    path: Path
    meta: dict[str, Any]
    prompts: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]] = field(default_factory=dict)
    heads: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]] = field(default_factory=dict)
    backbone: dict[str, torch.Tensor] | None = None

    @property
    def tasks(self) -> list[str]:
        """Task names in training order (task index = position); the json itself is key-sorted."""
        return list(self.meta.get("task_order") or self.meta["tasks"])


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors as contiguous CPU copies. Under ZeRO-3 call it inside ``GatheredParameters``."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _split(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]],
                                                      dict[str, torch.Tensor]]:
    """Model parameter names (prompts.<n>.*, heads.<t>.*, backbone.*) -> per prompt, per head, backbone."""
    prompts: dict[str, dict[str, torch.Tensor]] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    backbone: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        group, _, rest = name.partition(".")
        if group == "backbone":
            backbone[rest] = t
            continue
        key, _, sub = rest.partition(".")
        if group == "prompts":
            prompts.setdefault(key, {})[sub] = t
        elif group == "heads":
            heads.setdefault(key, {})[sub] = t
        else:
            raise ValueError(f"tensor {name!r} belongs to no prompt, head or backbone")
    return prompts, heads, backbone


def materialise(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A prompt's export tensors: an MLP reparameterization becomes the table it computes."""
    if "mlp.0.weight" in tensors:
        with torch.no_grad():
            return {"table": table_from_mlp({k: v.float() for k, v in tensors.items()}).contiguous()}
    return dict(tensors)


def save_export(out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], spec: BackboneSpec, fingerprint: str,
                method: str, prompts: dict[str, dict[str, Any]], tasks: dict[str, dict[str, Any]],
                extra: dict[str, Any] | None = None) -> Path:
    """Write an export. ``tensors``: trainable tensors by model parameter name; ``prompts``: per prompt its
    config (``asdict(PromptConfig)`` + ``layers``); ``tasks``: per task its head json (kind, num_labels,
    label_names, route, ...)."""
    by_prompt, by_head, backbone = _split(tensors)
    for name in list(prompts) + list(tasks):
        if not _NAME.match(name):
            raise ValueError(f"prompt/task name {name!r}: expected letters, digits, _ . + -")
    meta = {"format": FORMAT, "version": VERSION, "method": method,
            "backbone": {**spec.to_dict(), "fingerprint": fingerprint},
            "prompts": {n: {**cfg, "materialised": True} for n, cfg in prompts.items()},
            "tasks": tasks, "task_order": list(tasks), **(extra or {})}
    for t in tasks.values():
        t.setdefault("route", [])

    def write(tmp: Path) -> None:
        (tmp / "prompts").mkdir()
        (tmp / "heads").mkdir()
        for name, cfg in meta["prompts"].items():
            save_file(materialise(by_prompt.get(name, {})), str(tmp / "prompts" / f"{name}.safetensors"),
                      metadata={"format": FORMAT})
            (tmp / "prompts" / f"{name}.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for name, head in tasks.items():
            save_file(by_head.get(name, {}), str(tmp / "heads" / f"{name}.safetensors"), metadata={"format": FORMAT})
            (tmp / "heads" / f"{name}.json").write_text(json.dumps(head, indent=2, sort_keys=True) + "\n")
        if backbone:
            save_file(backbone, str(tmp / "backbone.safetensors"), metadata={"format": FORMAT})
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_dir_write(out_dir, write)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ExportMismatch(f"{path}: missing (expected a megaprompt export directory)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportMismatch(f"{path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise ExportMismatch(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportMismatch(f"{path}: missing (expected a megaprompt export directory)")
    try:
        tensors = load_file(str(path))
    except Exception as err:       # safetensors raises its own error types for foreign bytes
        raise ExportMismatch(f"{path}: not a safetensors file ({type(err).__name__})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportMismatch(f"{path}: tensor {name!r} holds NaN or Inf values (a diverged run?)")
    return tensors


def read_export(export_dir: str | os.PathLike) -> ExportData:
    """An export directory (v2, or v1 converted in memory), with one-line errors for missing or foreign files."""
    d = Path(export_dir)
    repair_dir(d)          # an export swap that a crash interrupted: put the previous export back
    if not (d / "export.json").is_file() and (d / "prompt.json").is_file():
        return _read_v1(d)
    meta_path = d / "export.json"
    meta = _json(meta_path)
    if meta.get("format") != FORMAT:
        raise ExportMismatch(f"{meta_path}: format={meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ExportMismatch(f"{meta_path}: version={meta.get('version')!r}, this megaprompt reads versions 1 and "
                             f"{VERSION}")
    for key, kind in (("backbone", dict), ("prompts", dict), ("tasks", dict), ("method", str)):
        if not isinstance(meta.get(key), kind):
            raise ExportMismatch(f"{meta_path}: {key!r} missing or not a {kind.__name__}")
    if sorted(meta.get("task_order") or meta["tasks"]) != sorted(meta["tasks"]):
        raise ExportMismatch(f"{meta_path}: task_order {meta.get('task_order')} does not list the tasks "
                             f"{sorted(meta['tasks'])}")
    out = ExportData(d, meta)
    for name in meta["prompts"]:
        out.prompts[name] = (_json(d / "prompts" / f"{name}.json"), _tensors(d / "prompts" / f"{name}.safetensors"))
    for name in meta["tasks"]:
        head = _json(d / "heads" / f"{name}.json")
        if not isinstance(head.get("kind"), str):
            raise ExportMismatch(f"{d / 'heads' / f'{name}.json'}: 'kind' missing or not a str")
        out.heads[name] = (head, _tensors(d / "heads" / f"{name}.safetensors"))
        missing = [p for p in head.get("route", []) if p not in out.prompts]
        if missing:
            raise ExportMismatch(f"{d / 'heads' / f'{name}.json'}: route names prompt {missing[0]!r}, which the "
                                 f"export lacks")
    if (d / "backbone.safetensors").is_file():
        out.backbone = _tensors(d / "backbone.safetensors")
    return out


def _read_v1(d: Path) -> ExportData:
    """A version-1 export (``prompt.json`` + ``prompt.safetensors``, tensors named ``prompt.*``/``head.*``):
    one task, one prompt ``shared``, converted to the v2 structure in memory (MLP tables materialised)."""
    meta_path = d / "prompt.json"
    old = _json(meta_path)
    if old.get("format") != FORMAT:
        raise ExportMismatch(f"{meta_path}: format={old.get('format')!r}, expected {FORMAT!r}")
    for key, kind in (("backbone", dict), ("prompt", dict), ("head", dict), ("method", str)):
        if not isinstance(old.get(key), kind):
            raise ExportMismatch(f"{meta_path}: {key!r} missing or not a {kind.__name__}")
    tensors = _tensors(d / "prompt.safetensors")
    task = old.get("task") or "task"
    prompt_t = {k[len("prompt."):]: v for k, v in tensors.items() if k.startswith("prompt.")}
    head_t = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    backbone_t = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    has_prompt = old["method"] in ("pt2", "lester")
    prompts = {"shared": ({**old["prompt"], "materialised": True}, materialise(prompt_t))} if has_prompt else {}
    head = {"kind": old["head"]["kind"], "num_labels": old["head"].get("num_labels", 1),
            "label_names": old.get("label_names", []), "route": ["shared"] if has_prompt else [],
            "head_type": old.get("head_type", "linear"), "label_words": old.get("label_words"),
            "null_threshold": old.get("null_threshold"), "max_seq_len": old.get("max_seq_len", 128)}
    keep = ("backbone_arg", "seed", "max_seq_len", "step", "dev")
    meta = {"format": FORMAT, "version": 1, "method": old["method"], "backbone": old["backbone"],
            "prompts": {n: c for n, (c, _) in prompts.items()}, "tasks": {task: head},
            **{k: old[k] for k in keep if k in old}}
    return ExportData(d, meta, prompts, {task: (head, head_t)}, backbone_t or None)


def flat_tensors(data: ExportData) -> dict[str, torch.Tensor]:
    """An export's tensors under the model's parameter names (``prompts.<n>.*``, ``heads.<t>.*``, ``backbone.*``)."""
    out = {f"prompts.{n}.{k}": v for n, (_, t) in data.prompts.items() for k, v in t.items()}
    out.update({f"heads.{n}.{k}": v for n, (_, t) in data.heads.items() for k, v in t.items()})
    out.update({f"backbone.{k}": v for k, v in (data.backbone or {}).items()})
    return out


def check_backbone(meta: dict[str, Any], spec: BackboneSpec, fingerprint: str | None = None,
                   where: str = "export") -> None:
    """The export's backbone facts (and weight fingerprint, when both sides have one) against a loaded one."""
    saved = meta["backbone"]
    for key in CHECKED_FACTS:
        if saved.get(key) != getattr(spec, key):
            raise ExportMismatch(f"{where}: backbone {key}={saved.get(key)!r} in the export but "
                                 f"{getattr(spec, key)!r} in the loaded backbone ({spec.name or spec.model_type})")
    if fingerprint and saved.get("fingerprint") and saved["fingerprint"] != fingerprint:
        raise ExportMismatch(f"{where}: backbone weights fingerprint {saved['fingerprint']} in the export but "
                             f"{fingerprint} in the loaded backbone ({spec.name or spec.model_type}): the prompt was "
                             f"trained on another checkpoint of the same shape")


def upgrade_v1(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite a version-1 export as version 2 (``python -m megaprompt.export SRC DST``)."""
    data = read_export(src)
    tensors = flat_tensors(data)
    spec = BackboneSpec(**{k: v for k, v in data.meta["backbone"].items() if k != "fingerprint"})
    extra = {k: v for k, v in data.meta.items() if k not in ("format", "version", "method", "backbone", "prompts",
                                                                 "tasks", "task_order")}
    return save_export(dst, tensors, spec, data.meta["backbone"].get("fingerprint", ""), data.meta["method"],
                       {n: c for n, (c, _) in data.prompts.items()}, {n: h for n, (h, _) in data.heads.items()}, extra)


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3:
        sys.exit("usage: python -m megaprompt.export V1_EXPORT_DIR V2_EXPORT_DIR")
    print(upgrade_v1(sys.argv[1], sys.argv[2]))
