"""``PromptedModel``: one frozen backbone, named prompts and one head per task - the unit megaprompt trains.

Task identity is a batch field: ``forward(..., task_ids=(B,))`` (or ``task="rte"`` for a whole batch). The
prompt bank (``prompts.bank``) gives each row the prefix of its task's route (prompt names, concatenated),
the prefix is passed to the backbone per call (``BackboneAdapter.forward``), and each task's head runs on its
own rows. Single-task training is the T=1 case of the same path: one task, one prompt ``"shared"``.

Which parameters train is decided by the method (never by name matching): ``trainable_modules()`` returns
the prompts and heads (pt2, lester), the heads (head), or everything (ft), and ``configure_trainable`` freezes
the rest. A head may keep parts frozen although it trains (the verbalizer's pretrained MLM head) by listing
them in ``frozen_submodules()``; only ft trains those too.

Tasks absent from a batch still get gradients - exact zeros (``_idle_zero``): every trainable parameter takes
part in every step, so ZeRO-3 (which would otherwise wait for a gradient that never comes) and ZeRO-2 see
the same optimizer inputs, and a resumed run the same as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from megaprompt.backbones import BackboneSpec, get_adapter
from megaprompt.heads import build_head
from megaprompt.prompts import PromptConfig, build_prompt
from megaprompt.prompts.bank import gather_input_prompt, gather_prefix, present_tasks

SHARED = "shared"           # the prompt every task's route starts with
SHARINGS = ("shared", "shared+task")


@dataclass(frozen=True)
class TaskSlot:
    """A task the model serves: its name (a head and a route), head kind and number of labels."""

    name: str
    head: str = "cls"
    num_labels: int = 2


class PromptedModel(nn.Module):
    def __init__(self, backbone: nn.Module, spec: BackboneSpec, prompt_cfg: PromptConfig, tasks: list[TaskSlot],
                 prompts: nn.ModuleDict, heads: nn.ModuleDict, routes: dict[str, list[str]]) -> None:
        super().__init__()
        self.backbone, self.spec, self.prompt_cfg = backbone, spec, prompt_cfg
        self.adapter = get_adapter(spec.model_type)
        self.tasks: list[TaskSlot] = []
        self.routes: dict[str, list[str]] = {}
        self.prompts, self.heads = prompts, heads
        if prompt_cfg.kind == "prefix":
            self.adapter.install(backbone)
        for slot in tasks:
            self._register(slot, routes.get(slot.name, []))
        self.configure_trainable()

    # ---- tasks -------------------------------------------------------------------------------------------
    def _register(self, slot: TaskSlot, route: list[str]) -> None:
        if slot.name in self.routes:
            raise ValueError(f"task {slot.name!r} is already in the model")
        if slot.name not in self.heads:
            raise ValueError(f"task {slot.name!r} has no head")
        missing = [n for n in route if n not in self.prompts]
        if missing:
            raise ValueError(f"task {slot.name!r} routes through unknown prompt {missing[0]!r}")
        self.tasks.append(slot)
        self.routes[slot.name] = list(route)

    def add_task(self, slot: TaskSlot, head: nn.Module, route: list[str],
                 prompts: dict[str, nn.Module] | None = None) -> None:
        """Add a task (its head, its route and any new prompts); trainability follows the method."""
        for name, module in (prompts or {}).items():
            if name in self.prompts:
                raise ValueError(f"prompt {name!r} is already in the model")
            self.prompts[name] = module
        self.heads[slot.name] = head
        self._register(slot, route)
        self.configure_trainable()

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_index(self, name: str) -> int:
        try:
            return self.task_names.index(name)
        except ValueError:
            raise KeyError(f"unknown task {name!r}; this model has {', '.join(self.task_names)}") from None

    def task_parameters(self, name: str) -> list[nn.Parameter]:
        """The trainable parameters only task ``name`` uses: its head and prompts no other task routes through."""
        others = {p for t, route in self.routes.items() if t != name for p in route}
        modules = [self.heads[name]] + [self.prompts[p] for p in self.routes[name] if p not in others]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    @property
    def prompt(self) -> nn.Module | None:
        """The only prompt (single-prompt models); None for methods without one."""
        if len(self.prompts) > 1:
            raise AttributeError(f"this model has {len(self.prompts)} prompts; use model.prompts[name]")
        return next(iter(self.prompts.values()), None)

    @property
    def head(self) -> nn.Module:
        """The only head (single-task models)."""
        if len(self.heads) != 1:
            raise AttributeError(f"this model has {len(self.heads)} heads; use model.heads[task]")
        return next(iter(self.heads.values()))

    # ---- which parameters train -------------------------------------------------------------------------
    def trainable_modules(self) -> list[nn.Module]:
        method = self.prompt_cfg.method
        if method == "ft":
            return [self.backbone, self.heads]
        if method == "head":
            return [self.heads]
        return [self.prompts, self.heads]

    def configure_trainable(self) -> None:
        self.requires_grad_(False)
        for module in self.trainable_modules():
            module.requires_grad_(True)
        if self.prompt_cfg.method != "ft":
            for head in self.heads.values():
                for module in getattr(head, "frozen_submodules", list)():
                    module.requires_grad_(False)

    def enable_gradient_checkpointing(self, every_n_layers: int = 1) -> None:
        """Activation checkpointing of every ``every_n_layers``-th backbone layer (default: all), non-reentrant
        (``BackboneAdapter.checkpoint_kwargs``).

        transformers also hooks the input embeddings to require grad (a reentrant-checkpointing workaround);
        non-reentrant checkpointing does not need it, and with a frozen backbone it only adds a useless
        backward through layer 0 down to the embeddings, so the hook is removed. ``every_n_layers=2``
        recomputes half the layers (about 1.27x the un-checkpointed pt2 step instead of 1.5x, on CPU).
        """
        kwargs = self.adapter.checkpoint_kwargs()
        if hasattr(self.backbone, "activation_checkpointing_enable"):      # transformers >= 5.x
            self.backbone.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers)
        elif every_n_layers == 1:
            self.backbone.gradient_checkpointing_enable(kwargs)
        else:
            raise ValueError("every_n_layers > 1 needs transformers' activation_checkpointing_enable")
        self.backbone.disable_input_require_grads()

    # ---- forward ----------------------------------------------------------------------------------------
    def _resolve_tasks(self, batch: int, task_ids: torch.Tensor | None, task: str | None
                       ) -> tuple[torch.Tensor | None, int | None]:
        if task is not None:
            return None, self.task_index(task)
        if task_ids is None:
            if len(self.tasks) != 1:
                raise ValueError(f"a model with {len(self.tasks)} tasks needs task_ids (B,) or task=<name>")
            return None, 0
        task_ids = torch.as_tensor(task_ids).view(-1)
        if task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= len(self.tasks)):
            raise ValueError(f"task_ids out of range 0..{len(self.tasks) - 1}")
        return task_ids, None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                prefix_mask: torch.Tensor | None = None, task_ids: torch.Tensor | None = None,
                task: str | None = None, **extra: Any) -> dict[str, Any]:
        """Inputs (B, L) - or (B, C, L) for multiple choice, flattened to (B*C, L) for the backbone.

        ``task_ids`` (B,) long names each row's task (index into ``self.tasks``); ``task`` names one task for
        the whole batch; a single-task model needs neither. ``prefix_mask`` (B, P) bool masks prefix slots
        out of attention (True = attend); None = all visible. Returns ``loss`` (row-weighted mean of the
        tasks' losses), ``logits`` (one tensor when the rows' heads agree on its shape, else None) and
        ``per_task``: name -> {"rows", "loss", "logits"} for each task present.
        """
        bsz = input_ids.shape[0]
        task_ids, single = self._resolve_tasks(bsz, task_ids, task)
        choices = input_ids.shape[1] if input_ids.dim() == 3 else 1
        if input_ids.dim() == 3:  # multiple choice: every choice is its own sequence
            extra["num_choices"] = choices
            input_ids, attention_mask = input_ids.flatten(0, 1), attention_mask.flatten(0, 1)
            if token_type_ids is not None:
                token_type_ids = token_type_ids.flatten(0, 1)
        rows_ids = None if task_ids is None else task_ids.to(input_ids.device).repeat_interleave(choices)
        row_mask = None if prefix_mask is None else prefix_mask.repeat_interleave(choices, 0)
        routes = [self.routes[t.name] for t in self.tasks]
        n = input_ids.shape[0]
        n_prompt, prefix = 0, None
        if self.prompt_cfg.kind == "prefix":
            prefix = gather_prefix(self.prompts, routes, self.spec.num_layers, n, rows_ids, single, row_mask)
            inputs = self.adapter.model_inputs(attention_mask, input_ids=input_ids, token_type_ids=token_type_ids)
        elif self.prompt_cfg.kind == "input":  # prepend to word embeddings: prompts take positions 0..P-1
            embeds = self.backbone.get_input_embeddings()(input_ids)
            prompt = gather_input_prompt(self.prompts, routes, n, rows_ids, single).to(embeds.dtype)
            n_prompt = prompt.shape[1]
            ones = attention_mask.new_ones(n, n_prompt) if row_mask is None else row_mask.to(attention_mask)
            if token_type_ids is not None:
                token_type_ids = torch.cat([token_type_ids.new_zeros(n, n_prompt), token_type_ids], 1)
            inputs = self.adapter.model_inputs(torch.cat([ones, attention_mask], dim=1),
                                               inputs_embeds=torch.cat([prompt, embeds], dim=1),
                                               token_type_ids=token_type_ids)
        else:
            inputs = self.adapter.model_inputs(attention_mask, input_ids=input_ids, token_type_ids=token_type_ids)
        hidden = self.adapter.forward(self.backbone, prefix, **inputs).last_hidden_state[:, n_prompt:]  # (n, L, H)
        return self._heads(hidden, attention_mask, input_ids, labels, task_ids, single, choices, extra)

    def _heads(self, hidden: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor,
               labels: torch.Tensor | None, task_ids: torch.Tensor | None, single: int | None, choices: int,
               extra: dict[str, Any]) -> dict[str, Any]:
        """Each present task's head on its own rows; idle tasks' parameters get exact-zero gradients."""
        bsz = hidden.shape[0] // choices
        per_task: dict[str, dict[str, Any]] = {}
        for t, rows in present_tasks(bsz, task_ids, single):
            name = self.tasks[t].name
            if rows is None:
                h, m, ids, lab, ex = hidden, attention_mask, input_ids, labels, extra
            else:
                rows = rows.to(hidden.device)
                flat = rows if choices == 1 else (rows[:, None] * choices + torch.arange(choices, device=rows.device)).view(-1)
                h, m, ids = hidden[flat], attention_mask[flat], input_ids[flat]
                lab = None if labels is None else labels[rows.to(labels.device)]
                ex = {k: v[rows.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == bsz
                      else v for k, v in extra.items()}
            # input_ids: heads that look for a token (the verbalizer's [MASK]) find it; the others ignore it
            out = self.heads[name](h, m, labels=lab, input_ids=ids, **ex)
            per_task[name] = {"rows": rows, "loss": out["loss"], "logits": out["logits"]}
        return {"loss": self._loss(per_task, bsz), "logits": _merge_logits(per_task, bsz), "per_task": per_task}

    def _loss(self, per_task: dict[str, dict[str, Any]], bsz: int) -> torch.Tensor | None:
        losses = [(o["loss"], bsz if o["rows"] is None else o["rows"].numel()) for o in per_task.values()]
        if any(loss is None for loss, _ in losses):
            return None
        loss = losses[0][0] if len(losses) == 1 else sum(v * (k / bsz) for v, k in losses)
        if self.training and torch.is_grad_enabled():
            loss = loss + self._idle_zero(per_task)
        return loss

    def _idle_zero(self, per_task: dict[str, Any]) -> torch.Tensor | float:
        """0 x (sum of the trainable parameters of tasks absent from the batch): exact-zero gradients for them."""
        if len(self.tasks) == 1:
            return 0.0
        used = {p for name in per_task for p in self.routes[name]}
        idle = [self.heads[t.name] for t in self.tasks if t.name not in per_task]
        idle += [m for name, m in self.prompts.items() if name not in used]
        params = [p for m in idle for p in m.parameters() if p.requires_grad]
        if not params:
            return 0.0
        return sum(p.sum() for p in params) * 0.0


def _merge_logits(per_task: dict[str, dict[str, Any]], bsz: int) -> torch.Tensor | None:
    outs = list(per_task.values())
    if len(outs) == 1:
        return outs[0]["logits"]
    shapes = {tuple(o["logits"].shape[1:]) for o in outs}
    if len(shapes) != 1:
        return None                               # heads of different widths: read per_task
    first = outs[0]["logits"]
    merged = first.new_zeros(bsz, *first.shape[1:])
    for o in outs:
        merged = merged.index_copy(0, o["rows"].to(first.device), o["logits"])
    return merged


def build_prompts(prompt_cfg: PromptConfig, spec: BackboneSpec, task_names: list[str], sharing: str = "shared",
                  task_prompt_len: int = 0) -> tuple[nn.ModuleDict, dict[str, list[str]]]:
    """The prompts and routes of a method: one shared prompt (every task routes through it), plus with
    ``sharing="shared+task"`` one prompt per task (``task_prompt_len`` slots, default the shared length)."""
    if sharing not in SHARINGS:
        raise ValueError(f"prompt sharing {sharing!r}: expected one of {', '.join(SHARINGS)}")
    prompts = nn.ModuleDict()
    shared = build_prompt(prompt_cfg, spec) if task_names else None
    if shared is None:
        return prompts, {t: [] for t in task_names}
    prompts[SHARED] = shared
    routes = {t: [SHARED] for t in task_names}
    if sharing == "shared+task":
        from dataclasses import replace
        own = replace(prompt_cfg, prompt_len=task_prompt_len or prompt_cfg.prompt_len)
        for t in task_names:
            if t == SHARED:
                raise ValueError(f"a task may not be named {SHARED!r} with per-task prompts")
            prompts[t] = build_prompt(own, spec)
            routes[t].append(t)
    return prompts, routes


def build_model(backbone: nn.Module, prompt_cfg: PromptConfig, tasks: list[TaskSlot] | str | None = None,
                num_labels: int | None = None, name: str = "", head_dropout: float = 0.1,
                head: nn.Module | None = None, heads: dict[str, nn.Module] | None = None,
                sharing: str = "shared", task_prompt_len: int = 0, task_name: str = "task") -> PromptedModel:
    """Wrap a loaded backbone with the method's prompts and a freshly initialised head per task.

    ``tasks``: a list of ``TaskSlot``s, or (single task) a head kind with ``num_labels``: one task named
    ``task_name``. ``head``/``heads`` are prebuilt heads (the verbalizer, whose MLM head comes with the
    backbone), by task name (``head`` = the single task's).
    """
    if tasks is None or isinstance(tasks, str):
        tasks = [TaskSlot(task_name, tasks or "cls", num_labels if num_labels is not None else 2)]
    heads = dict(heads or {})
    if head is not None:
        heads[tasks[0].name] = head
    spec = get_adapter(backbone.config.model_type).spec(backbone, name)
    head_modules = nn.ModuleDict()
    for slot in tasks:
        head_modules[slot.name] = heads.get(slot.name) or build_head(
            slot.head, spec.hidden_size, slot.num_labels, pooling="last" if spec.is_decoder else "first",
            dropout=head_dropout)
    prompts, routes = build_prompts(prompt_cfg, spec, [t.name for t in tasks], sharing, task_prompt_len)
    return PromptedModel(backbone, spec, prompt_cfg, list(tasks), prompts, head_modules, routes)
