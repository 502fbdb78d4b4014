"""megaprompt.costs.params: exact counts from the real PromptedModel built on the meta device."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch

from megaprompt.accounting import count_parameters
from megaprompt.costs.params import (Backbone, CostInputError, affine, build_prompted, count, main,
                                     make_prompt_config, resolve_backbone, table_rows)
from megaprompt.model import build_model

# BERT-base (google-bert/bert-base-uncased) by hand: V=30522, h=768, L=12, ffn=3072, 512 positions, 2 types.
V, H, L, FFN = 30522, 768, 12, 3072
BERT_BASE_EMB = V * H + 512 * H + 2 * H + 2 * H                  # words, positions, types, LayerNorm
BERT_BASE_LAYER = 4 * (H * H + H) + 2 * H + (H * FFN + FFN) + (FFN * H + H) + 2 * H
BERT_BASE_POOLER = H * H + H
BERT_BASE = BERT_BASE_EMB + L * BERT_BASE_LAYER + BERT_BASE_POOLER

# A tiny Llama (GQA): h=64, 2 layers, 4 heads of 16, 2 kv heads, ffn 128, vocab 1000, no biases.
TL = dict(model_type="llama", vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)
TL_D, TL_KV = 16, 2
TL_LAYER = 64 * 64 + 2 * (64 * TL_KV * TL_D) + 64 * 64 + 3 * 64 * 128 + 2 * 64   # q, k+v, o, mlp, 2 RMSNorms
TL_TOTAL = 1000 * 64 + 2 * TL_LAYER + 64                                          # + embeddings, final norm


def test_bert_base_pt2_by_hand():
    c = count("bert-base-uncased", "pt2", prompt_len=16)
    assert BERT_BASE == 109_482_240
    assert c.frozen == BERT_BASE
    prefix = 16 * L * 2 * H            # P x (layers * 2 (k, v) * heads * head_dim)
    head = H * 2 + 2                   # Linear(hidden, 2)
    assert c.trainable == prefix + head == 296_450
    assert c.total == BERT_BASE + prefix + head
    assert c.ratio == pytest.approx((prefix + head) / (BERT_BASE + prefix + head))


def test_tiny_llama_pt2_by_hand_from_config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TL))
    c = count(str(path), "pt2", prompt_len=16)
    assert c.frozen == TL_TOTAL
    assert c.trainable == 16 * 2 * 2 * TL_KV * TL_D + (64 * 2 + 2)     # prefix per *kv* head + head
    assert count(str(tmp_path), "pt2", prompt_len=16) == c              # a model directory works too


def test_other_methods_by_hand():
    assert count("bert-base-uncased", "lester", prompt_len=20).trainable == 20 * H + 2 * H + 2
    assert count("bert-base-uncased", "head").trainable == 2 * H + 2
    ft = count("bert-base-uncased", "ft")
    assert (ft.frozen, ft.trainable) == (0, BERT_BASE + 2 * H + 2)
    mlp = count("bert-base-uncased", "pt2", prompt_len=16, reparam="mlp", mlp_hidden=512)
    assert mlp.trainable == 16 * H + (H * 512 + 512) + (512 * L * 2 * H + L * 2 * H) + 2 * H + 2
    last4 = count("bert-base-uncased", "pt2", prompt_len=16, prompt_layers="last:4")
    assert last4.trainable == 16 * 4 * 2 * H + 2 * H + 2


def test_glm_10b_stand_in_is_exact():
    h, layers, vocab, pos = 4096, 48, 50304, 1025
    glm = layers * (12 * h * h + 13 * h) + vocab * h + 2 * pos * h + 2 * h   # GLM-10B's own modules
    assert count("glm-10b", "head").frozen == glm == 9_880_682_496


def test_llama_3_70b_on_meta_by_hand():
    h, layers, kv, d, ffn, vocab = 8192, 80, 8, 128, 28672, 128256
    layer = 2 * h * h + 2 * h * kv * d + 3 * h * ffn + 2 * h
    c = count("llama-3-70b", "pt2", prompt_len=16)
    assert c.frozen == vocab * h + layers * layer + h
    assert c.trainable == 16 * layers * 2 * kv * d + 2 * h + 2


@pytest.mark.parametrize("method,reparam", [("pt2", "none"), ("pt2", "mlp"), ("lester", "none"), ("ft", "none"),
                                            ("head", "none")])
def test_meta_count_equals_real_module(tiny, family, method, reparam):
    bb = Backbone(family, tiny.config(family))
    cfg = make_prompt_config(method, 4, reparam, mlp_hidden=16)
    meta = build_prompted(bb, cfg)
    assert all(p.is_meta for p in meta.parameters())
    real = build_model(tiny.backbone(family), cfg, "cls", 2)          # the module a training run builds
    assert not any(p.is_meta for p in real.parameters())
    assert count_parameters(meta) == count_parameters(real)
    cpu = build_prompted(bb, cfg, device="cpu")
    assert count_parameters(cpu) == count_parameters(real)


def test_deepspeed_data_ptr_dedupe_miscounts_meta(tiny):
    """Why we don't use DeepSpeed's model_to_params: it keys by data_ptr(), which is 0 for every meta tensor."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    bb = Backbone("bert", tiny.config("bert"))
    cfg = make_prompt_config("pt2", 4)
    meta, cpu = build_prompted(bb, cfg), build_prompted(bb, cfg, device="cpu")
    ours = count_parameters(meta).total
    assert {p.data_ptr() for p in meta.parameters()} == {0}
    assert model_to_params(meta)[0] != ours
    assert model_to_params(meta)[0] == list(meta.parameters())[-1].numel()   # one survivor of the dedupe
    assert model_to_params(cpu)[0] == ours == count_parameters(cpu).total


def test_affine_solution_is_exact():
    bb = resolve_backbone("bert-base-uncased")
    f = affine(bb, "pt2")
    assert (f.a, f.c, f.frozen) == (L * 2 * H, 2 * H + 2, BERT_BASE)
    for r in (Fraction(1, 1000), Fraction(3, 100)):
        p = f.prompt_len_for(r)
        t = f.a * p + f.c
        assert t / (t + f.frozen) == r                                   # exact in rationals
        n = math.ceil(p)
        assert f.ratio_at(n) >= float(r) > f.ratio_at(n - 1)
        assert count(bb, "pt2", prompt_len=n).ratio == pytest.approx(f.ratio_at(n), rel=1e-12)
    rows = table_rows(["bert-base-uncased"])
    assert rows[0]["prompt_len_0.1%"] == math.ceil(f.prompt_len_for(Fraction(1, 1000))) == 6
    assert rows[0]["prompt_len_3%"] == 184


def test_cli_json(capsys):
    assert main(["--backbone", "bert-base-uncased", "--method", "pt2", "--prompt_len", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frozen_params"] == BERT_BASE
    assert out["trainable_params"] == 296_450
    assert out["total_params"] == BERT_BASE + 296_450
    assert out["trainable_ratio"] == pytest.approx(296_450 / (BERT_BASE + 296_450))


def test_cli_table_and_csv(capsys):
    assert main(["--table", "--backbone", "bert-base-uncased", "--backbone", "llama-2-7b"]) == 0
    text = capsys.readouterr().out
    assert "bert-base-uncased" in text and "llama-2-7b" in text
    assert main(["--backbone", "tiny-bert", "--method", "head", "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("backbone,method,prompt_len,frozen_params") and len(lines) == 2


@pytest.mark.parametrize("argv,needle", [
    (["--backbone", "no-such-model"], "presets: bert-base-uncased"),
    (["--backbone", "bert-base-uncased", "--prompt_layers", "40"], "out of range"),
    (["--backbone", "bert-base-uncased", "--prompt_len", "0"], "prompt_len=0"),
    (["--backbone", "bert-base-uncased", "--num_labels", "0"], "--num_labels"),
    (["--table", "--method", "ft"], "needs a prompt method"),
    ([], "--backbone is required"),
])
def test_cli_bad_input_is_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) > 0


def test_unsupported_family_in_config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(CostInputError, match="not supported; supported: bert"):
        resolve_backbone(str(path))


def test_meta_build_allocates_nothing():
    m = build_prompted(resolve_backbone("llama-3-70b"), make_prompt_config("pt2", 16))
    assert all(p.device == torch.device("meta") for p in m.parameters())
