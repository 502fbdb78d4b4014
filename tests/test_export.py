"""Export of the trained tensors (safetensors + JSON) and loading them back with backbone checks."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from megaprompt.export import (FORMAT, ExportMismatch, load_export, read_export, save_export,
                               trainable_state_dict)
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig


def build(tiny, family, method="pt2", seed=0, reparam="none", prompt_len=3, **overrides):
    torch.manual_seed(100 + seed)  # prompt/head init differ per seed; the backbone is the cached one
    cfg = PromptConfig(method=method, prompt_len=prompt_len, reparam=reparam, mlp_hidden=8, prefix_dropout=0.0)
    return build_model(tiny.backbone(family, **overrides), cfg, "cls", 2, name=family, head_dropout=0.0).eval()


def export(model, path, **kw):
    return save_export(path, trainable_state_dict(model), model.spec, model.prompt_cfg, model.head_kind,
                       ["neg", "pos"], task="demo", **kw)


def logits(tiny, model):
    ids = tiny.ids(3, 6, seed=4)
    mask = torch.ones_like(ids)
    mask[2, -2:] = 0
    with torch.no_grad():
        return model(ids, mask)["logits"]


@pytest.mark.parametrize("family,method,reparam", [
    ("bert", "pt2", "none"), ("bert", "pt2", "mlp"), ("deberta-v2", "pt2", "none"), ("llama", "pt2", "none"),
    ("qwen3", "pt2", "mlp"), ("roberta", "lester", "none"), ("glm4", "lester", "none"), ("electra", "head", "none"),
])
def test_roundtrip_reproduces_logits_exactly(tiny, tmp_path, family, method, reparam):
    trained = build(tiny, family, method, seed=0, reparam=reparam)
    with torch.no_grad():  # "train": move every trainable tensor away from its init
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    expected = logits(tiny, trained)
    out = export(trained, tmp_path / "exp")
    assert out == tmp_path / "exp"

    fresh = build(tiny, family, method, seed=1, reparam=reparam)
    assert not torch.equal(logits(tiny, fresh), expected)
    meta = load_export(fresh, out)
    assert torch.equal(logits(tiny, fresh), expected)
    assert meta["method"] == method and meta["label_names"] == ["neg", "pos"] and meta["task"] == "demo"
    assert meta["prompt"]["reparam"] == reparam and meta["backbone"]["model_type"] == family


def test_only_trainable_tensors_are_saved(tiny, tmp_path):
    model = build(tiny, "llama", reparam="mlp")
    export(model, tmp_path / "e")
    tensors = load_file(str(tmp_path / "e" / "prompt.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(tensors) == trainable
    assert not any(k.startswith("backbone.") for k in tensors)
    meta = json.loads((tmp_path / "e" / "prompt.json").read_text())
    assert meta["format"] == FORMAT
    assert meta["tensors"] == {n: list(model.get_parameter(n).shape) for n in trainable}
    assert meta["head"] == {"kind": "cls", "num_labels": 2}


def test_safetensors_file_is_plain_data_no_pickle(tiny, tmp_path):
    export(build(tiny, "bert"), tmp_path / "e")
    raw = (tmp_path / "e" / "prompt.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    assert 8 + n + max(ends) == len(raw)             # header + raw tensor bytes, nothing else
    assert header["__metadata__"] == {"format": FORMAT}
    assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:8 + n]  # neither a torch zip nor a pickle
    assert sorted(f.name for f in (tmp_path / "e").iterdir()) == ["prompt.json", "prompt.safetensors"]


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
        load_export(other, tmp_path / "e")
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[n], other.get_parameter(n)) for n in before)  # nothing half-loaded


def test_loading_onto_another_family_names_model_type(tiny, tmp_path):
    export(build(tiny, "bert"), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="backbone model_type='bert' in the export but 'electra'"):
        load_export(build(tiny, "electra"), tmp_path / "e")


def test_method_and_shape_mismatches(tiny, tmp_path):
    export(build(tiny, "bert", prompt_len=3), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="tensor 'prompt.table' has shape"):
        load_export(build(tiny, "bert", prompt_len=5), tmp_path / "e")
    with pytest.raises(ExportMismatch, match="no counterpart in the model"):
        load_export(build(tiny, "bert", method="lester"), tmp_path / "e")
    export(build(tiny, "bert", method="head"), tmp_path / "h")
    with pytest.raises(ExportMismatch, match="no tensor for trainable parameter 'prompt.table'"):
        load_export(build(tiny, "bert"), tmp_path / "h")


def test_corrupt_or_foreign_files_give_one_line_errors(tiny, tmp_path):
    model = build(tiny, "bert")
    export(model, tmp_path / "e")
    meta_path = tmp_path / "e" / "prompt.json"
    good = meta_path.read_text()
    meta_path.write_text(good[: len(good) // 2])
    with pytest.raises(ExportMismatch, match="not valid JSON") as err:
        read_export(tmp_path / "e")
    assert "\n" not in str(err.value)
    meta_path.write_text(json.dumps({**json.loads(good), "format": "something-else"}))
    with pytest.raises(ExportMismatch, match="format='something-else'"):
        load_export(model, tmp_path / "e")
    with pytest.raises(ExportMismatch, match="prompt.json: missing"):
        read_export(tmp_path / "nowhere")


def test_nan_tensors_are_refused_naming_the_tensor(tiny, tmp_path):
    model = build(tiny, "bert")
    tensors = trainable_state_dict(model)
    tensors["head.out.bias"][0] = float("nan")
    save_export(tmp_path / "e", tensors, model.spec, model.prompt_cfg, "cls", ["neg", "pos"], task="demo")
    with pytest.raises(ExportMismatch, match=r"prompt.safetensors: tensor 'head.out.bias' holds NaN") as err:
        read_export(tmp_path / "e")
    assert "\n" not in str(err.value)


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
    _, tensors = read_export(tmp_path / "e")        # the reader repairs
    assert torch.equal(tensors["prompt.table"], a.prompt.table)
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
    for f in (tmp_path / "e").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_overwrite_is_atomic_and_leaves_no_temporaries(tiny, tmp_path):
    a, b = build(tiny, "bert", seed=0), build(tiny, "bert", seed=1)
    export(a, tmp_path / "e")
    export(b, tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    _, tensors = read_export(tmp_path / "e")
    assert torch.equal(tensors["prompt.table"], b.prompt.table)
    # a failing writer leaves the previous export intact
    with pytest.raises(ValueError):  # safetensors refuses non-contiguous tensors, inside the writer
        save_export(tmp_path / "e", {"x": torch.zeros(4, 3).t()}, a.spec, a.prompt_cfg, "cls", ["n", "p"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    assert torch.equal(read_export(tmp_path / "e")[1]["prompt.table"], b.prompt.table)
