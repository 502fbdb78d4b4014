"""The prompt bank: each row of a batch gets the prefix of its own task.

A model holds named prompts (a ``ModuleDict``) and, per task, a *route*: the prompt names whose prefixes are
concatenated for that task, in order (``["shared"]``, or ``["shared", "rte"]`` for a shared prompt plus a
per-task one). ``gather_prefix`` builds the ``PrefixState`` of one forward pass:

* per layer, ``kv`` ``(B, K, P_max, d)`` where P_max is the longest prefix any present task has there, and
  ``mask`` ``(B, P_max)`` True where the row's own prefix has a slot (None when every row sees every slot);
* a layer no present task prompts gets None, so rows with different prompt lengths or ``prompt_layers``
  share one batch and each row computes exactly what it would alone (masked slots get zero weight);
* prefix dropout is drawn per row (per example, as the official code's ``(B, P, ...)`` past_key_values).

Every prompt module is called (``prompt()``), never read directly, so ZeRO-3 gathers its parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from megaprompt.backbones.attention import PrefixState


def present_tasks(batch: int, task_ids: torch.Tensor | None, single: int | None) -> list[tuple[int, torch.Tensor | None]]:
    """(task index, row indices or None = all rows) for each task in the batch."""
    if task_ids is None:
        if single is None:
            raise ValueError("gather needs task_ids (B,) or single=<task index>")
        return [(single, None)]
    ids = task_ids.view(-1)
    if ids.shape[0] != batch:
        raise ValueError(f"task_ids has {ids.shape[0]} entries for a batch of {batch}")
    uniq = torch.unique(ids).tolist()
    if len(uniq) == 1:
        return [(int(uniq[0]), None)]
    return [(int(t), (ids == t).nonzero(as_tuple=True)[0]) for t in uniq]


def _rows_dropout(x: torch.Tensor, n: int, p: float, training: bool) -> torch.Tensor:
    """``x`` expanded to ``n`` rows (a view), with per-row dropout in training."""
    rows = x.unsqueeze(0).expand(n, *x.shape)
    if training and p > 0:
        rows = F.dropout(rows.contiguous(), p, training=True)
    return rows


def _task_segments(prompts: nn.ModuleDict, route: list[str], num_layers: int
                   ) -> tuple[list[list[tuple[torch.Tensor, nn.Module]]], list[int]]:
    """Per layer, the (2, K, P, d) segments of the task's prompts in route order, and their total length."""
    per_layer: list[list[tuple[torch.Tensor, nn.Module]]] = [[] for _ in range(num_layers)]
    for name in route:
        module = prompts[name]
        out = module()                                       # (Lp, 2, K, P, d)
        for j, layer in enumerate(module.layers):
            per_layer[layer].append((out[j], module))
    return per_layer, [sum(seg.shape[2] for seg, _ in segs) for segs in per_layer]


def gather_prefix(prompts: nn.ModuleDict, routes: list[list[str]], num_layers: int, batch: int,
                  task_ids: torch.Tensor | None = None, single: int | None = None,
                  row_mask: torch.Tensor | None = None) -> PrefixState:
    """The ``PrefixState`` for a batch of ``batch`` rows whose tasks are ``task_ids`` (B,) (or all ``single``).

    ``row_mask`` (B, P) bool, optional, hides slots per row (True = attend) in every layer, on top of the
    length mask; it may be narrower than a layer's prefix (missing columns stay visible).
    """
    present = present_tasks(batch, task_ids, single)
    segs = {t: _task_segments(prompts, routes[t], num_layers) for t, _ in present}
    kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    masks: list[torch.Tensor | None] = []
    for layer in range(num_layers):
        p_max = max(segs[t][1][layer] for t, _ in present)
        if p_max == 0:
            kv.append(None)
            masks.append(None)
            continue
        full, parts, lengths = None, [], []
        for t, rows in present:
            n = batch if rows is None else rows.numel()
            layer_segs = segs[t][0][layer]
            pieces = [_rows_dropout(seg, n, m.dropout.p, m.training) for seg, m in layer_segs]
            x = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=3) if pieces else None  # (n, 2, K, P_t, d)
            parts.append((rows, x))
            lengths.append(segs[t][1][layer])
        if len(present) == 1:
            full = parts[0][1]
        else:
            ref = next(x for _, x in parts if x is not None)
            full = ref.new_zeros(batch, *ref.shape[1:3], p_max, ref.shape[4])
            for rows, x in parts:
                if x is not None:
                    full = full.index_copy(0, rows, F.pad(x, (0, 0, 0, p_max - x.shape[3])))
        mask = None
        if any(n_t < p_max for n_t in lengths):
            mask = torch.zeros(batch, p_max, dtype=torch.bool, device=full.device)
            for (_, rows), n_t in zip(present, lengths):
                mask[rows if rows is not None else slice(None), :n_t] = True
        if row_mask is not None:
            rm = row_mask.to(device=full.device, dtype=torch.bool)[:, :p_max]
            rm = F.pad(rm, (0, p_max - rm.shape[1]), value=True)
            mask = rm if mask is None else mask & rm
        kv.append((full[:, 0], full[:, 1]))                  # (B, K, P_max, d) each
        masks.append(mask)
    return PrefixState(kv, masks)


def gather_input_prompt(prompts: nn.ModuleDict, routes: list[list[str]], batch: int,
                        task_ids: torch.Tensor | None = None, single: int | None = None) -> torch.Tensor:
    """Lester prompts of a batch, ``(B, P, width)``. Input prompts take positions, so every row of one batch
    must have the same total prompt length (a mix would shift the real tokens' positions of the shorter rows)."""
    present = present_tasks(batch, task_ids, single)
    parts = []
    for t, rows in present:
        n = batch if rows is None else rows.numel()
        pieces = [_rows_dropout(prompts[name](), n, prompts[name].dropout.p, prompts[name].training)
                  for name in routes[t]]
        parts.append((rows, pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)))
    lengths = {x.shape[1] for _, x in parts}
    if len(lengths) > 1:
        raise ValueError(f"input prompts of lengths {sorted(lengths)} in one batch: lester rows of one batch need "
                         f"one prompt length (batch them by task)")
    if len(parts) == 1:
        return parts[0][1]
    ref = parts[0][1]
    out = ref.new_zeros(batch, *ref.shape[1:])
    for rows, x in parts:
        out = out.index_copy(0, rows, x)
    return out
