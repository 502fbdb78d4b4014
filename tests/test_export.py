"""Export layout v2 (one safetensors + json per prompt and per head) and loading it back with backbone checks:
shape facts and the weight fingerprint; version-1 exports still load."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from megaprompt.assemble import attach_export, init_from_export, load_exports, save_model_export
from megaprompt.backbones import fingerprint
from megaprompt.export import FORMAT, ExportMismatch, read_export, save_export, trainable_state_dict
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig


def build(tiny, family, method="pt2", seed=0, reparam="none", prompt_len=3, tasks=None, **overrides):
    torch.manual_seed(100 + seed)  # prompt/head init differ per seed; the backbone is the cached one
    cfg = PromptConfig(method=method, prompt_len=prompt_len, reparam=reparam, mlp_hidden=8, prefix_dropout=0.0)
    return build_model(tiny.backbone(family, **overrides), cfg, tasks or "cls", 2, name=family, head_dropout=0.0,
                       task_name="demo").eval()


def empty(tiny, family, method="pt2", **overrides):
    """A model with no task yet, on the same cached backbone (what serving starts from)."""
    return build_model(tiny.backbone(family, **overrides), PromptConfig(method=method), [], name=family).eval()


def export(model, path, **kw):
    return save_model_export(model, path, tasks={"demo": {"label_names": ["neg", "pos"]}}, **kw)


def logits(tiny, model, task="demo"):
    ids = tiny.ids(3, 6, seed=4)
    mask = torch.ones_like(ids)
    mask[2, -2:] = 0
    with torch.no_grad():
        return model(ids, mask, task=task)["logits"]


def train_a_little(model):
    with torch.no_grad():  # "train": move every trainable tensor away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("family,method,reparam", [
    ("bert", "pt2", "none"), ("bert", "pt2", "mlp"), ("deberta-v2", "pt2", "none"), ("llama", "pt2", "none"),
    ("qwen3", "pt2", "mlp"), ("roberta", "lester", "none"), ("glm4", "lester", "none"), ("electra", "head", "none"),
])
def test_roundtrip_reproduces_logits(tiny, tmp_path, family, method, reparam):
    trained = build(tiny, family, method, seed=0, reparam=reparam)
    train_a_little(trained)
    expected = logits(tiny, trained)
    out = export(trained, tmp_path / "exp")
    assert out == tmp_path / "exp"

    fresh = empty(tiny, family, method)
    data = read_export(out)
    assert attach_export(fresh, data) == {"demo": "demo"}
    got = logits(tiny, fresh)
    if reparam == "mlp":   # the export holds the table the MLP computed (same math, one rounding step apart)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert not hasattr(fresh.prompts["shared"], "mlp") and hasattr(trained.prompts["shared"], "mlp")
    else:
        assert torch.equal(got, expected)
    meta = data.meta
    assert meta["version"] == 2 and meta["method"] == method and meta["tasks"]["demo"]["label_names"] == ["neg", "pos"]
    assert meta["backbone"]["model_type"] == family and meta["backbone"]["fingerprint"] == fingerprint(fresh.backbone)
    if method != "head":
        assert meta["prompts"]["shared"]["reparam"] == reparam and meta["tasks"]["demo"]["route"] == ["shared"]
    # Non-vacuous: a differently initialised model gives other logits
    assert not torch.equal(logits(tiny, build(tiny, family, method, seed=1, reparam=reparam)), expected)


def test_multi_task_export_keeps_the_task_order(tiny, tmp_path):
    from megaprompt.model import TaskSlot
    model = build(tiny, "bert", tasks=[TaskSlot("zeta", "cls", 2), TaskSlot("alpha", "cls", 3)])
    train_a_little(model)
    save_model_export(model, tmp_path / "e")
    data = read_export(tmp_path / "e")
    assert data.tasks == ["zeta", "alpha"]               # task index = position, not alphabetical
    fresh = empty(tiny, "bert")
    attach_export(fresh, data)
    assert fresh.task_names == ["zeta", "alpha"]
    for t in ("zeta", "alpha"):
        assert torch.equal(logits(tiny, fresh, t), logits(tiny, model, t))


def test_layout_one_file_pair_per_prompt_and_head(tiny, tmp_path):
    model = build(tiny, "llama", reparam="mlp")
    export(model, tmp_path / "e")
    files = sorted(str(p.relative_to(tmp_path / "e")) for p in (tmp_path / "e").rglob("*") if p.is_file())
    assert files == ["export.json", "heads/demo.json", "heads/demo.safetensors", "prompts/shared.json",
                     "prompts/shared.safetensors"]
    prompt = load_file(str(tmp_path / "e" / "prompts" / "shared.safetensors"))
    assert set(prompt) == {"table"}                      # the MLP materialised; the checkpoint keeps the MLP
    torch.testing.assert_close(prompt["table"], model.prompt.table_tensor(), rtol=0, atol=1e-6)
    head = load_file(str(tmp_path / "e" / "heads" / "demo.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {f"heads.demo.{k}" for k in head} == {n for n in trainable if n.startswith("heads.")}
    meta = json.loads((tmp_path / "e" / "export.json").read_text())
    assert meta["format"] == FORMAT and meta["prompts"]["shared"]["materialised"] is True
    assert json.loads((tmp_path / "e" / "heads" / "demo.json").read_text())["kind"] == "cls"
    assert json.loads((tmp_path / "e" / "prompts" / "shared.json").read_text())["layers"] == [0, 1]


def test_safetensors_files_are_plain_data_no_pickle(tiny, tmp_path):
    export(build(tiny, "bert"), tmp_path / "e")
    for f in (tmp_path / "e" / "prompts" / "shared.safetensors", tmp_path / "e" / "heads" / "demo.safetensors"):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        assert 8 + n + max(ends) == len(raw)             # header + raw tensor bytes, nothing else
        assert header["__metadata__"] == {"format": FORMAT}
        assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:8 + n]  # neither a torch zip nor a pickle


@pytest.mark.parametrize("override,field", [
    (dict(num_hidden_layers=3), "num_layers"),
    (dict(hidden_size=48), "hidden_size"),
    (dict(num_key_value_heads=1), "num_kv_heads"),
    (dict(head_dim=16), "head_dim"),
])
def test_loading_onto_a_different_backbone_names_the_field(tiny, tmp_path, override, field):
    export(build(tiny, "llama"), tmp_path / "e")
    other = build(tiny, "llama", **override)
    before = {n: p.clone() for n, p in other.named_parameters() if p.requires_grad}
    with pytest.raises(ExportMismatch, match=rf"backbone {field}=") as err:
        init_from_export(other, tmp_path / "e")
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[n], other.get_parameter(n)) for n in before)  # nothing half-loaded


def test_loading_onto_another_family_names_model_type(tiny, tmp_path):
    export(build(tiny, "bert"), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="backbone model_type='bert' in the export but 'electra'"):
        init_from_export(build(tiny, "electra"), tmp_path / "e")


def test_another_checkpoint_of_the_same_shape_is_refused_by_fingerprint(tiny, tmp_path):
    """Same config, other weights (another seed): shape facts agree, the fingerprint does not."""
    trained = build(tiny, "bert")
    bb_dir = tmp_path / "bb"
    trained.backbone.save_pretrained(bb_dir)
    export(trained, tmp_path / "e", extra={"backbone_arg": str(bb_dir)})
    model, _, _ = load_exports([tmp_path / "e"], with_tokenizer=False)        # the real loading path works
    assert torch.equal(logits(tiny, model), logits(tiny, trained))
    tiny.backbone("bert", seed=7).save_pretrained(tmp_path / "other")
    with pytest.raises(ExportMismatch, match="fingerprint .* in the export but .* trained on another checkpoint") as err:
        load_exports([tmp_path / "e"], backbone_arg=str(tmp_path / "other"), with_tokenizer=False)
    assert "\n" not in str(err.value)
    # fp32 and bf16 loads of one checkpoint have one fingerprint (bf16-rounded sample)
    assert fingerprint(trained.backbone) == fingerprint(trained.backbone.to(torch.bfloat16))


def test_method_and_shape_mismatches(tiny, tmp_path):
    export(build(tiny, "bert", prompt_len=3), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="tensor 'table' has shape"):
        init_from_export(build(tiny, "bert", prompt_len=5), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="method pt2 in the export, lester"):
        init_from_export(build(tiny, "bert", method="lester"), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="method pt2, the model serves lester"):
        attach_export(empty(tiny, "bert", "lester"), read_export(tmp_path / "e"))
    with pytest.raises(ExportMismatch, match="materialised table; start from it with --reparam none"):
        init_from_export(build(tiny, "bert", reparam="mlp"), tmp_path / "e")
    model = empty(tiny, "bert")
    attach_export(model, read_export(tmp_path / "e"))
    with pytest.raises(ExportMismatch, match="task 'demo' is already served"):
        attach_export(model, read_export(tmp_path / "e"))


def test_corrupt_or_foreign_files_give_one_line_errors(tiny, tmp_path):
    export(build(tiny, "bert"), tmp_path / "e")
    meta_path = tmp_path / "e" / "export.json"
    good = meta_path.read_text()
    meta_path.write_text(good[: len(good) // 2])
    with pytest.raises(ExportMismatch, match="not valid JSON") as err:
        read_export(tmp_path / "e")
    assert "\n" not in str(err.value)
    meta_path.write_text(json.dumps({**json.loads(good), "format": "something-else"}))
    with pytest.raises(ExportMismatch, match="format='something-else'"):
        read_export(tmp_path / "e")
    meta_path.write_text(json.dumps({**json.loads(good), "version": 3}))
    with pytest.raises(ExportMismatch, match="version=3, this megaprompt reads versions 1 and 2"):
        read_export(tmp_path / "e")
    meta_path.write_text(good)
    (tmp_path / "e" / "heads" / "demo.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ExportMismatch, match="demo.safetensors: not a safetensors file"):
        read_export(tmp_path / "e")
    with pytest.raises(ExportMismatch, match="export.json: missing"):
        read_export(tmp_path / "nowhere")


def test_nan_tensors_are_refused_naming_the_tensor(tiny, tmp_path):
    model = build(tiny, "bert")
    tensors = trainable_state_dict(model)
    tensors["heads.demo.out.bias"][0] = float("nan")
    save_model_export(model, tmp_path / "e", tensors=tensors)
    with pytest.raises(ExportMismatch, match=r"heads/demo.safetensors: tensor 'out.bias' holds NaN") as err:
        read_export(tmp_path / "e")
    assert "\n" not in str(err.value)


def write_v1(model, path, task="demo"):
    """A version-1 export, byte for byte what megaprompt wrote before layout v2."""
    from dataclasses import asdict
    path.mkdir()
    tensors = {k.replace("prompts.shared.", "prompt.").replace(f"heads.{task}.", "head."): v
               for k, v in trainable_state_dict(model).items()}
    save_file(tensors, str(path / "prompt.safetensors"), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": 1, "task": task, "method": model.prompt_cfg.method,
            "prompt": asdict(model.prompt_cfg), "head": {"kind": "cls", "num_labels": 2},
            "backbone": model.spec.to_dict(), "label_names": ["neg", "pos"], "tensors": {}, "backbone_arg": "x",
            "seed": 0, "max_seq_len": 64, "head_type": "linear", "label_words": None, "null_threshold": None}
    (path / "prompt.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("reparam", ["none", "mlp"])
def test_version_1_exports_still_load(tiny, tmp_path, reparam):
    trained = build(tiny, "bert", reparam=reparam)
    train_a_little(trained)
    write_v1(trained, tmp_path / "v1")
    data = read_export(tmp_path / "v1")
    assert data.meta["version"] == 1 and data.tasks == ["demo"] and set(data.prompts["shared"][1]) == {"table"}
    fresh = empty(tiny, "bert")
    attach_export(fresh, data)
    torch.testing.assert_close(logits(tiny, fresh), logits(tiny, trained), rtol=0, atol=1e-6)
    # and the converter writes a v2 export that loads the same
    from megaprompt.export import upgrade_v1
    upgrade_v1(tmp_path / "v1", tmp_path / "v2")
    again = empty(tiny, "bert")
    attach_export(again, read_export(tmp_path / "v2"))
    assert read_export(tmp_path / "v2").meta["version"] == 2
    torch.testing.assert_close(logits(tiny, again), logits(tiny, trained), rtol=0, atol=1e-6)


def test_a_crash_between_the_two_renames_is_repaired(tiny, tmp_path, monkeypatch):
    """Kill the swap after the old export is parked and before the new one is renamed in: the next reader and the
    next writer both find the old, complete export - never no export at all."""
    a, b = build(tiny, "bert", seed=0), build(tiny, "bert", seed=1)
    export(a, tmp_path / "e")
    real_rename = type(tmp_path).rename

    def crash_on_second_rename(self, target):
        if self.name.startswith(".e.tmp-"):
            raise KeyboardInterrupt("crash between the two renames")
        return real_rename(self, target)

    monkeypatch.setattr(type(tmp_path), "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        export(b, tmp_path / "e")
    monkeypatch.undo()
    # the writer's own clean-up already restored it; simulate the harder case of a hard kill (no clean-up ran)
    (tmp_path / "e").rename(tmp_path / ".e.old")
    assert not (tmp_path / "e").exists()
    data = read_export(tmp_path / "e")        # the reader repairs
    assert torch.equal(data.prompts["shared"][1]["table"], a.prompt.table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_exports_follow_the_umask(tiny, tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        export(build(tiny, "bert"), tmp_path / "e")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "e").stat().st_mode) == 0o755
    for f in (tmp_path / "e").rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o755 if f.is_dir() else 0o644), f


def test_overwrite_is_atomic_and_leaves_no_temporaries(tiny, tmp_path):
    a, b = build(tiny, "bert", seed=0), build(tiny, "bert", seed=1)
    export(a, tmp_path / "e")
    export(b, tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    assert torch.equal(read_export(tmp_path / "e").prompts["shared"][1]["table"], b.prompt.table)
    # a failing writer leaves the previous export intact
    with pytest.raises(ValueError):  # safetensors refuses non-contiguous tensors, inside the writer
        save_export(tmp_path / "e", {"heads.demo.x": torch.zeros(4, 3).t()}, a.spec, "", "pt2", {},
                    {"demo": {"kind": "cls"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    assert torch.equal(read_export(tmp_path / "e").prompts["shared"][1]["table"], b.prompt.table)
