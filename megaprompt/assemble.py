"""One way to put a model together, for training, prediction and serving.

* ``assemble``: a loaded backbone + the method's prompts + a fresh head per task (training, ``engine.build``),
  optionally started from an export (``init_from_export``: the paper's multi-task -> single-task continuation).
* ``load_exports``: one backbone plus the prompts and heads of one or more exports (``predict``, serving):
  every export is checked against the backbone's shape facts and weight fingerprint first.
* ``attach_export``: add an export's tasks to a model that already serves others (prompt names that clash
  are renamed ``<task>__<name>``; a task name that clashes is an error).
* ``save_model_export``: the export of a model (training gathers the tensors from ZeRO first).
"""
from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from megaprompt.backbones import fingerprint
from megaprompt.errors import UserError
from megaprompt.export import ExportData, ExportMismatch, check_backbone, read_export, save_export, trainable_state_dict
from megaprompt.heads import build_head
from megaprompt.model import PromptedModel, TaskSlot, build_model
from megaprompt.prompts import PromptConfig, build_prompt

_PROMPT_FIELDS = {f.name for f in fields(PromptConfig)}


def assemble(backbone: nn.Module, prompt_cfg: PromptConfig, tasks: list[TaskSlot], name: str = "",
             head_dropout: float = 0.1, heads: dict[str, nn.Module] | None = None, sharing: str = "shared",
             task_prompt_len: int = 0, dtype: torch.dtype | None = None,
             init_from: str | os.PathLike | None = None) -> PromptedModel:
    """The training model: prompts + heads built on every rank from the same seed, optionally initialised from
    an export, then cast to ``dtype`` (ZeRO-3 flattens all trainable partitions into one buffer of one dtype)."""
    model = build_model(backbone, prompt_cfg, list(tasks), name=name, head_dropout=head_dropout, heads=heads,
                        sharing=sharing, task_prompt_len=task_prompt_len)
    if init_from:
        init_from_export(model, init_from)
    if dtype is not None:
        model.prompts.to(dtype)
        model.heads.to(dtype)
    return model


def _load(module: nn.Module, tensors: dict[str, torch.Tensor], where: str, need: set[str] | None = None) -> None:
    own = dict(module.named_parameters())
    for key, t in tensors.items():
        if key not in own:
            raise ExportMismatch(f"{where}: tensor {key!r} has no counterpart in the model")
        if tuple(own[key].shape) != tuple(t.shape):
            raise ExportMismatch(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, the model expects "
                                 f"{tuple(own[key].shape)}")
    missing = sorted((need if need is not None else set(own)) - set(tensors))
    if missing:
        raise ExportMismatch(f"{where}: no tensor for parameter {missing[0]!r}")
    with torch.no_grad():
        for key, t in tensors.items():
            own[key].copy_(t.to(own[key].dtype))


def init_from_export(model: PromptedModel, export_dir: str | os.PathLike, backbone_fp: str | None = None) -> list[str]:
    """Copy the prompts (by name) and heads (by task name) an export and ``model`` share into ``model``.
    Returns what was loaded. Export prompts are tables, so the model's prompts must be too (``--reparam none``)."""
    data = read_export(export_dir)
    check_backbone(data.meta, model.spec, backbone_fp, str(export_dir))
    if data.meta["method"] != model.prompt_cfg.method:
        raise ExportMismatch(f"{export_dir}: method {data.meta['method']} in the export, {model.prompt_cfg.method} "
                             f"in this run")
    loaded = []
    for name, (_, tensors) in data.prompts.items():
        if name in model.prompts:
            if hasattr(model.prompts[name], "mlp"):
                raise ExportMismatch(f"{export_dir}: prompt {name!r} is a materialised table; start from it with "
                                     f"--reparam none")
            _load(model.prompts[name], tensors, f"{export_dir}/prompts/{name}")
            loaded.append(f"prompts/{name}")
    for task, (_, tensors) in data.heads.items():
        if task in model.heads and tensors:
            _load(model.heads[task], tensors, f"{export_dir}/heads/{task}", need=set(tensors))
            loaded.append(f"heads/{task}")
    if not loaded:
        raise ExportMismatch(f"{export_dir}: shares no prompt ({', '.join(data.prompts) or 'none'}) or task "
                             f"({', '.join(data.tasks)}) with this run ({', '.join(model.task_names)})")
    return loaded


def _prompt_module(cfg: dict[str, Any], model: PromptedModel) -> nn.Module:
    """A prompt rebuilt from its export json: the table form (exports hold materialised tables)."""
    kw = {k: v for k, v in cfg.items() if k in _PROMPT_FIELDS}
    return build_prompt(PromptConfig(**{**kw, "reparam": "none"}), model.spec)


def _head_module(head: dict[str, Any], model: PromptedModel, tokenizer: Any, mlm_head: nn.Module | None) -> nn.Module:
    if head.get("head_type", "linear") == "verbalizer":
        from megaprompt.heads.verbalizer import VerbalizerHead
        if mlm_head is None or tokenizer is None:
            raise UserError("a verbalizer export needs the backbone's MLM head and tokenizer (load_exports loads them)")
        return VerbalizerHead.for_words(mlm_head, tokenizer, head["label_words"])
    return build_head(head["kind"], model.spec.hidden_size, int(head.get("num_labels", 1)),
                      pooling="last" if model.spec.is_decoder else "first", dropout=0.0)


def attach_export(model: PromptedModel, data: ExportData, tokenizer: Any = None,
                  mlm_head: nn.Module | None = None) -> dict[str, str]:
    """Add ``data``'s tasks (their prompts and heads, loaded) to ``model``; returns export task -> model task."""
    where = str(data.path)
    if data.meta["method"] != model.prompt_cfg.method:
        raise ExportMismatch(f"{where}: method {data.meta['method']}, the model serves {model.prompt_cfg.method} "
                             f"exports")
    clash = [t for t in data.tasks if t in model.routes]
    if clash:
        raise ExportMismatch(f"{where}: task {clash[0]!r} is already served by this model")
    dtype = next(model.backbone.parameters()).dtype
    renamed: dict[str, str] = {}
    new_prompts: dict[str, nn.Module] = {}
    for name, (cfg, tensors) in data.prompts.items():
        module = _prompt_module(cfg, model)
        _load(module, tensors, f"{where}/prompts/{name}")
        new_name = name if name not in model.prompts else f"{data.tasks[0]}__{name}"
        renamed[name] = new_name
        new_prompts[new_name] = module.to(dtype).eval()
    if data.backbone is not None:
        if model.tasks:
            raise ExportMismatch(f"{where}: a full fine-tuning export brings its own backbone; load it alone")
        _load(model.backbone, data.backbone, f"{where}/backbone.safetensors")
    for task in data.tasks:
        head_meta, tensors = data.heads[task]
        head = _head_module(head_meta, model, tokenizer, mlm_head)
        verbalizer = head_meta.get("head_type") == "verbalizer"      # its frozen MLM head comes with the backbone
        _load(head, tensors, f"{where}/heads/{task}", need=set(tensors) if verbalizer else None)
        route = [renamed[p] for p in head_meta.get("route", [])]
        todo = {p: new_prompts.pop(p) for p in route if p in new_prompts}
        model.add_task(TaskSlot(task, head_meta["kind"], int(head_meta.get("num_labels", 1))), head.to(dtype).eval(),
                       route, prompts=todo)
    for name, module in new_prompts.items():     # prompts no task routes through: kept, for completeness
        model.prompts[name] = module
    model.configure_trainable()
    return {t: t for t in data.tasks}


def save_model_export(model: PromptedModel, out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor] | None = None,
                      backbone_fp: str | None = None, tasks: dict[str, dict[str, Any]] | None = None,
                      extra: dict[str, Any] | None = None) -> Path:
    """Export ``model``'s trainable tensors (``tensors``: already gathered ones, under ZeRO) with its prompts'
    configs, each task's head json (kind, num_labels, route, head_type, + ``tasks[name]``) and the backbone
    fingerprint (computed here when not given: collective under ZeRO-3)."""
    from megaprompt.heads.verbalizer import VerbalizerHead

    prompts = {name: {**asdict(m.cfg), "layers": list(getattr(m, "layers", []))} for name, m in model.prompts.items()}
    heads = {}
    for slot in model.tasks:
        heads[slot.name] = {"kind": slot.head, "num_labels": slot.num_labels, "label_names": [],
                            "route": list(model.routes[slot.name]),
                            "head_type": "verbalizer" if isinstance(model.heads[slot.name], VerbalizerHead) else "linear",
                            **(tasks or {}).get(slot.name, {})}
    return save_export(out_dir, trainable_state_dict(model) if tensors is None else tensors, model.spec,
                       backbone_fp if backbone_fp is not None else fingerprint(model.backbone), model.prompt_cfg.method,
                       prompts, heads, extra)


def load_exports(paths: list[str | os.PathLike], backbone_arg: str | None = None,
                 dtype: torch.dtype = torch.float32, with_tokenizer: bool = True
                 ) -> tuple[PromptedModel, list[ExportData], Any]:
    """One backbone and every task of ``paths``: ``(model in eval mode, the exports, tokenizer)``.

    The backbone is ``backbone_arg`` or the first export's own record (tiny random backbones from its seed);
    each export is checked against its shape facts and weight fingerprint before a tensor is loaded.
    """
    from megaprompt.backbones.load import load_backbone, load_tokenizer

    datas = [read_export(p) for p in paths]
    if not datas:
        raise UserError("load_exports: no export given")
    arg = backbone_arg or datas[0].meta.get("backbone_arg")
    if not arg:
        raise ExportMismatch(f"{datas[0].path}: no backbone_arg recorded; pass the backbone explicitly")
    methods = {d.meta["method"] for d in datas}
    if len(methods) > 1:
        raise ExportMismatch(f"exports of different methods ({', '.join(sorted(methods))}) cannot share one model")
    verbalizer = any(h.get("head_type") == "verbalizer" for d in datas for h, _ in d.heads.values())
    backbone, _, *mlm = load_backbone(arg, dtype=dtype, seed=datas[0].meta.get("seed", 0), with_mlm_head=verbalizer)
    tokenizer = load_tokenizer(arg) if with_tokenizer or verbalizer else None
    model = build_model(backbone, PromptConfig(method=methods.pop()), [], name=arg)
    fp = fingerprint(backbone)
    for d in datas:
        check_backbone(d.meta, model.spec, fp, str(d.path))
    for d in datas:
        attach_export(model, d, tokenizer, mlm[0] if mlm else None)
    return model.eval(), datas, tokenizer


__all__ = ["assemble", "attach_export", "init_from_export", "load_exports", "save_model_export"]
