"""Several tasks on one backbone: rows routed by ``task_ids`` get their own prefix and head, and a mixed batch
computes what each task computes alone; the per-call prefix lets two models share a backbone; idle tasks get
exact-zero gradients; per-task prompts (shared+task) train only where they are routed."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from megaprompt.heads import build_head
from megaprompt.model import PromptedModel, TaskSlot, build_model
from megaprompt.prompts import PromptConfig, build_prompt


def mixed_model(tiny, family, method="pt2"):
    """Three tasks with different prompts: lengths 2 / 5 / 3, prompt_layers all / last:1 / 0, and heads of
    2, 3 and 2 labels; task c routes through two prompts (a's and its own)."""
    torch.manual_seed(0)
    bb = tiny.backbone(family)
    model = build_model(bb, PromptConfig(method=method), [], name=family)
    spec = model.spec
    specs = {"a": dict(prompt_len=2), "b": dict(prompt_len=5, prompt_layers="last:1"),
             "c": dict(prompt_len=3, prompt_layers="0")}
    routes = {"a": ["pa"], "b": ["pb"], "c": ["pa", "pc"]}
    for name, labels in (("a", 2), ("b", 3), ("c", 2)):
        prompts = {}
        for p in routes[name]:
            if p not in model.prompts:
                cfg = PromptConfig(method=method, prefix_dropout=0.0, **specs[p[1]])
                prompts[p] = build_prompt(cfg, spec)
        head = build_head("cls", spec.hidden_size, labels, pooling="last" if spec.is_decoder else "first", dropout=0.0)
        model.add_task(TaskSlot(name, "cls", labels), head, routes[name], prompts)
    return model.eval()


def batch(tiny, family, n=6, length=7):
    ids = tiny.ids(n, length, seed=3)
    mask = torch.ones_like(ids)
    for r in range(1, n, 2):                          # every other row right-padded by r % 3 + 1
        k = r % 3 + 1
        mask[r, -k:] = 0
        ids[r, -k:] = tiny.pad_id(family)
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "llama", "qwen3"])
def test_mixed_batch_equals_each_task_alone(tiny, family):
    model = mixed_model(tiny, family)
    ids, mask = batch(tiny, family)
    task_ids = torch.tensor([0, 1, 2, 1, 0, 2])
    with torch.no_grad():
        mixed = model(ids, mask, task_ids=task_ids, labels=torch.tensor([1, 2, 0, 0, 1, 1]))
    assert mixed["logits"] is None                     # heads of 2 and 3 labels: read per task
    assert set(mixed["per_task"]) == {"a", "b", "c"}
    losses = []
    for t, name in enumerate("abc"):
        rows = (task_ids == t).nonzero(as_tuple=True)[0]
        with torch.no_grad():
            alone = model(ids[rows], mask[rows], task=name, labels=torch.tensor([1, 2, 0, 0, 1, 1])[rows])
        got = mixed["per_task"][name]
        assert torch.equal(got["rows"], rows)
        torch.testing.assert_close(got["logits"], alone["logits"], rtol=0, atol=1e-5)
        losses.append((alone["loss"], rows.numel()))
        # Non-vacuous: another task's prompt and head give other outputs for these rows
        other = "b" if name != "b" else "a"
        with torch.no_grad():
            wrong = model(ids[rows], mask[rows], task=other)["logits"]
        assert wrong.shape != alone["logits"].shape or (wrong - alone["logits"]).abs().max() > 1e-4
    torch.testing.assert_close(mixed["loss"], sum(v * k for v, k in losses) / 6, rtol=0, atol=1e-5)


def test_mixed_batch_of_same_width_heads_merges_logits_in_row_order(tiny):
    model = mixed_model(tiny, "bert")
    ids, mask = batch(tiny, "bert", n=4)
    task_ids = torch.tensor([2, 0, 0, 2])               # a and c: both 2 labels
    with torch.no_grad():
        out = model(ids, mask, task_ids=task_ids)
        for r in range(4):
            alone = model(ids[r:r + 1, :int(mask[r].sum())], mask[r:r + 1, :int(mask[r].sum())],
                          task="ac"[int(task_ids[r]) // 2])["logits"]
            torch.testing.assert_close(out["logits"][r:r + 1], alone, rtol=0, atol=1e-5)


def test_two_models_on_one_backbone_do_not_interfere(tiny):
    """The prefix is an argument of each call: a second PromptedModel wrapping the same backbone (installing
    the attention again) leaves the first one's outputs exactly as they were."""
    bb = tiny.backbone("llama")
    torch.manual_seed(1)
    first = build_model(bb, PromptConfig(method="pt2", prompt_len=3, prefix_dropout=0.0), "cls", 2).eval()
    ids, mask = batch(tiny, "llama", n=3)
    with torch.no_grad():
        before = first(ids, mask)["logits"]
    torch.manual_seed(2)
    second = build_model(bb, PromptConfig(method="pt2", prompt_len=5, prefix_dropout=0.0), "cls", 2).eval()
    with torch.no_grad():
        theirs = second(ids, mask)["logits"]
        after = first(ids, mask)["logits"]
        interleaved = [first(ids, mask)["logits"], second(ids, mask)["logits"]]
    assert torch.equal(after, before) and torch.equal(interleaved[0], before)
    assert torch.equal(interleaved[1], theirs)
    assert (theirs - before).abs().max() > 1e-4        # non-vacuous: the two prompts differ


def test_idle_tasks_get_exact_zero_gradients(tiny):
    model = mixed_model(tiny, "bert").train()
    ids, mask = batch(tiny, "bert", n=4)
    model(ids, mask, task_ids=torch.zeros(4, dtype=torch.long), labels=torch.tensor([0, 1, 0, 1]))["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())  # every trainable tensor takes part (ZeRO-3 waits for all)
    for name, g in grads.items():
        used = name.startswith(("prompts.pa.", "heads.a."))
        assert (g.abs().sum() > 0) == used, name
    assert {n for n, _ in model.named_parameters() if n.startswith(("prompts.", "heads."))} == set(grads)
    assert {id(p) for p in model.task_parameters("b")} == {id(p) for n, p in model.named_parameters()
                                                           if n.startswith(("prompts.pb.", "heads.b."))}
    assert {id(p) for p in model.task_parameters("c")} == {id(p) for n, p in model.named_parameters()
                                                           if n.startswith(("prompts.pc.", "heads.c."))}


def test_shared_plus_task_sharing_names_and_routes(tiny):
    model = build_model(tiny.backbone("bert"), PromptConfig(method="pt2", prompt_len=4), [
        TaskSlot("rte", "cls", 2), TaskSlot("cb", "cls", 3)], sharing="shared+task", task_prompt_len=2)
    assert model.routes == {"rte": ["shared", "rte"], "cb": ["shared", "cb"]}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "prompts.shared.table", "prompts.rte.table", "prompts.cb.table", "heads.rte.out.weight",
        "heads.rte.out.bias", "heads.cb.out.weight", "heads.cb.out.bias"}
    assert model.prompts["rte"].table.shape[0] == 2 and model.prompts["shared"].table.shape[0] == 4
    with pytest.raises(ValueError, match="needs task_ids"):
        model(tiny.ids(1, 3), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(KeyError, match="unknown task 'wsc'"):
        model(tiny.ids(1, 3), torch.ones(1, 3, dtype=torch.long), task="wsc")


def test_lester_rows_of_one_length_share_a_batch(tiny):
    model = build_model(tiny.backbone("bert"), PromptConfig(method="lester", prompt_len=3, prefix_dropout=0.0),
                        [TaskSlot("a", "cls", 2), TaskSlot("b", "cls", 2)], sharing="shared+task").eval()
    ids, mask = batch(tiny, "bert", n=4)
    task_ids = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        mixed = model(ids, mask, task_ids=task_ids)["logits"]
        for t, name in enumerate("ab"):
            rows = (task_ids == t).nonzero(as_tuple=True)[0]
            torch.testing.assert_close(mixed[rows], model(ids[rows], mask[rows], task=name)["logits"],
                                       rtol=0, atol=1e-5)
    assert isinstance(model.prompts, nn.ModuleDict) and isinstance(model, PromptedModel)
