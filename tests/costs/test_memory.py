"""megaprompt.costs.memory / activations: hand-computed byte accounting, meta-measured activations, bad input."""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import replace

import pytest

from megaprompt.costs.activations import measure
from megaprompt.costs.cli import main
from megaprompt.costs.memory import CostInputError, MethodCosts, Setup, estimate, gpu_counts, min_gpus, prepare
from megaprompt.costs.params import Backbone, ModelFacts, build_prompted, make_prompt_config

GB = 10 ** 9


def facts(trainable, frozen, largest=0, largest_t=0) -> ModelFacts:
    return ModelFacts("synthetic", list(trainable), list(frozen), largest, largest_t, 2, 64)


def test_zero3_by_hand_bf16():
    # 4 GPUs; per-parameter partitions ceil(n/4): trainable 10 -> 3, 7 -> 2 (5); frozen 100 -> 25, 3 -> 1 (26).
    f = facts([10, 7], [100, 3])
    s = Setup(stage=3, nodes=2, gpus_per_node=2, dtype="bf16", contiguous_gradients=False, persistence_threshold=0)
    e = estimate(f, s)
    assert e.gpu["frozen_weights"] == 2 * 26          # frozen: only the bf16 copy, partitioned
    assert e.gpu["trainable_weights"] == 2 * 5
    assert e.gpu["gradients"] == 2 * 5
    assert e.gpu["master_weights"] == 4 * 5
    assert e.gpu["optimizer_states"] == 8 * 5
    assert e.model_states == 2 * 26 + 16 * 5          # the ZeRO paper's 2+2+12 per trained parameter
    assert e.gpu["step_transient"] == (2 + 4) * 5      # flattened bf16 grads + their fp32 cast
    assert e.cpu == {}


def test_zero3_fp32_master_is_a_copy_and_bucket_counts():
    f = facts([8], [16])
    e = estimate(f, Setup(stage=3, nodes=1, gpus_per_node=2, dtype="fp32", reduce_bucket_size=1000,
                          persistence_threshold=0))
    assert e.model_states == 4 * 8 + (4 + 4 + 4 + 8) * 4    # frozen 4*8; trainable 20 bytes x 4 elements
    assert e.gpu["gathered_buffers"] == 4 * 1000             # the reduce bucket only (no module is gathered)


def test_zero3_persistent_params_are_replicated():
    f = facts([8], [16, 50_000, 200_000], largest=200_000)
    s = Setup(stage=3, nodes=1, gpus_per_node=4, dtype="bf16", contiguous_gradients=False,
              persistence_threshold=100_000, prefetch_bucket_size=10)
    e = estimate(f, s)
    persistent = 8 + 16 + 50_000
    live = min(200_000 + 10, 200_000)   # module + prefetch, capped by the non-persistent total
    assert e.gpu["gathered_buffers"] == 2 * (persistent + live)
    one = estimate(f, replace(s, gpus_per_node=1))      # one rank gathers nothing: views of its partition
    assert one.gpu["gathered_buffers"] == 0


def test_zero3_offload_vs_deepspeed_estimator():
    """DeepSpeed's estimator budgets 18 (param+optimizer offload) / 16 (optimizer offload) CPU bytes per
    parameter; the tensors DeepSpeed 0.19 really allocates (measured by benchmarks/memory_check.py) are
    2 bytes more: bf16 weight 2 (param offload) + bf16 grad partition 2 + fp32 master 4 + fp32 grad 4 + Adam 8."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    p, nodes, gpn = 1_200_000, 2, 4
    n = nodes * gpn
    for offload_param, ds_bytes, ours in ((True, 18, 20), (False, 16, 18)):
        s = Setup(stage=3, nodes=nodes, gpus_per_node=gpn, dtype="bf16", offload_optimizer=True,
                  offload_param=offload_param)
        e = estimate(facts([p], []), s)
        cpu, _, _ = estimate_zero3_model_states_mem_needs(
            p, 0, gpn, nodes, cpu_offload=True, cpu_offload_params=offload_param, additional_buffer_factor=1.0)
        assert cpu == ds_bytes * p // nodes
        assert e.cpu_per_node == ours * p // nodes == cpu + 2 * p // nodes
        assert e.model_states == 20 * p // n                  # wherever they live
    no_off = estimate(facts([p], []), Setup(stage=3, nodes=nodes, gpus_per_node=gpn, dtype="bf16"))
    assert no_off.model_states == 16 * p // n                 # the ZeRO paper's 16; DeepSpeed's estimator says 18


def test_zero2_zero1_stage0_by_hand():
    f = facts([1000], [5000])
    z2 = estimate(f, Setup(stage=2, nodes=1, gpus_per_node=4, dtype="bf16", contiguous_gradients=False))
    assert (z2.gpu["frozen_weights"], z2.gpu["trainable_weights"], z2.gpu["gradients"],
            z2.gpu["master_weights"], z2.gpu["optimizer_states"]) == (10000, 2000, 2 * 250, 4 * 250, 8 * 250)
    z1 = estimate(f, Setup(stage=1, nodes=1, gpus_per_node=4, dtype="bf16", contiguous_gradients=False))
    assert z1.gpu["gradients"] == 2 * 1000
    z0 = estimate(f, Setup(stage=0, nodes=1, gpus_per_node=4, dtype="bf16"))
    assert z0.model_states == 2 * 5000 + 16 * 1000
    z0_32 = estimate(f, Setup(stage=0, nodes=1, gpus_per_node=4, dtype="fp32"))
    assert z0_32.model_states == 4 * 5000 + 16 * 1000  # fp32 weight + grad + Adam, no master copy


def test_min_gpus_by_hand():
    # 1e9 trainable params, bf16 ZeRO-3: 16 bytes/N model states + 6 bytes/N step transient = 22e9/N.
    mc = MethodCosts("synthetic", "ft", facts([10 ** 9], []), None)
    s = Setup(stage=3, gpus_per_node=8, contiguous_gradients=False, persistence_threshold=0)
    assert min_gpus(mc, s, 4 * GB) == 6                 # 22/6 = 3.67 <= 4 < 22/5 = 4.4
    assert min_gpus(mc, s, 1 * GB) == 24                # whole nodes past one node: 22/24 < 1
    assert min_gpus(mc, s, 10 ** 6, max_gpus=64) is None
    assert gpu_counts(8, 32) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]


def test_meta_activation_profile_equals_cpu_profile(tiny, family):
    """Storage de-duplication on meta gives the same bytes as the same forward on real CPU tensors."""
    bb = Backbone(family, tiny.config(family))
    cfg = make_prompt_config("pt2", 4)
    meta = measure(build_prompted(bb, cfg), 2, 8, "fp32")
    cpu = measure(build_prompted(bb, cfg, device="cpu"), 2, 8, "fp32")
    assert meta.per_layer == cpu.per_layer and meta.outside == cpu.outside


def test_activation_profiles_by_method(tiny):
    bb = Backbone("llama", tiny.config("llama"))
    prof = {m: measure(build_prompted(bb, make_prompt_config(m, 4)), 2, 16, "bf16") for m in ("ft", "pt2", "head")}
    assert sum(prof["head"].per_layer) == 0                   # nothing in the backbone needs a gradient
    assert prof["head"].total() == prof["head"].outside < 1000
    assert 0 < prof["pt2"].total() < prof["ft"].total()       # frozen linears keep no input
    z3 = measure(build_prompted(bb, make_prompt_config("pt2", 4)), 2, 16, "bf16", zero3_linear=True)
    assert z3.total() > prof["pt2"].total()                   # DeepSpeed's linear saves every input
    p = prof["ft"]
    assert p.total(checkpointing=True) == p.outside + sum(p.layer_inputs) + max(p.per_layer)
    assert p.layer_inputs[0] == 2 * 16 * 32 * 2               # (B, L, hidden) in bf16


def test_prepare_and_estimate_real_backbone():
    s = Setup(stage=3, nodes=1, gpus_per_node=8, batch_size=1, seq_len=64)
    ft, pt2 = (prepare("bert-large-cased", m, s) for m in ("ft", "pt2"))
    e_ft, e_pt = estimate(ft.facts, s, 0), estimate(pt2.facts, s, 0)
    assert e_pt.gpu["optimizer_states"] < e_ft.gpu["optimizer_states"] / 100   # 0.24% of the parameters train
    assert e_ft.model_states / e_pt.model_states > 7         # 16 vs 2 bytes per backbone parameter


def test_cli_json_and_fit_sentence(capsys, tmp_path):
    assert main(["--backbone", "tiny-bert", "--seq_len", "16", "--batch_size", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in out["methods"]] == ["ft", "pt2"]
    assert out["methods"][1]["min_gpus"] == 1
    assert main(["--backbone", "tiny-bert", "--seq_len", "16", "--batch_size", "2"]) == 0
    text = capsys.readouterr().out
    assert "P-Tuning v2 of tiny-bert" in text and "needs 1 x 80 GiB GPU" in text
    csv_path = tmp_path / "m.csv"
    assert main(["--backbone", "tiny-bert", "--seq_len", "16", "--csv", str(csv_path)]) == 0
    assert csv_path.read_text().startswith("backbone,method,world,where,component,bytes")


def test_cli_reads_ds_config(capsys, tmp_path):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto",
                                                     "offload_optimizer": {"device": "cpu"}}}))
    assert main(["--backbone", "tiny-bert", "--seq_len", "16", "--ds_config", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["setup"]["stage"] == 2 and out["setup"]["offload_optimizer"] is True
    assert out["methods"][0]["cpu_per_node_bytes"] > 0


@pytest.mark.parametrize("argv,needle", [
    (["--nodes", "0"], "need at least 1"),
    (["--gpus_per_node", "0"], "need at least 1"),
    (["--stage", "5"], "invalid choice"),
    (["--offload_param", "--stage", "2"], "parameter offload needs ZeRO stage 3"),
    (["--nodes", "1000000", "--gpus_per_node", "8"], "parameters to partition"),
    (["--backbone", "gpt-17"], "presets: bert-base-uncased"),
    (["--methods", "ft,lora"], "--methods"),
    (["--seq_len", "600"], "exceed the 512 positions"),
    (["--batch_size", "0"], "must be >= 1"),
])
def test_cli_bad_input(capsys, argv, needle):
    base = ["--backbone", "tiny-bert", "--seq_len", "16"]
    with pytest.raises(SystemExit) as exc:
        main(base + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_estimate_rejects_impossible_setup():
    with pytest.raises(CostInputError, match="3 GPUs but only 2 parameters"):
        estimate(facts([1], [1]), Setup(gpus_per_node=3))
    with pytest.raises(CostInputError, match="stage 4"):
        estimate(facts([1], [1]), Setup(stage=4))


def test_cli_defaults_to_the_shipped_zero3_config(capsys):
    """The estimate describes the run the README launches: ds_configs/zero3.json (memory_efficient_linear off),
    unless --ds_config none asks for DeepSpeed's defaults (on: frozen linears keep their inputs)."""
    shipped = json.loads((Path(__file__).resolve().parents[2] / "ds_configs" / "zero3.json").read_text())
    assert main(["--backbone", "tiny-bert", "--seq_len", "16", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["setup"]["ds_config"].endswith("ds_configs/zero3.json")
    z = shipped["zero_optimization"]
    assert default["setup"]["memory_efficient_linear"] is z["memory_efficient_linear"] is False
    assert default["setup"]["persistence_threshold"] == z["stage3_param_persistence_threshold"]
    assert main(["--backbone", "tiny-bert", "--seq_len", "16", "--json", "--ds_config", "none"]) == 0
    stock = json.loads(capsys.readouterr().out)
    assert stock["setup"]["ds_config"] is None and stock["setup"]["memory_efficient_linear"] is True
    pt2 = {r["method"]: r for r in default["methods"]}["pt2"]
    pt2_stock = {r["method"]: r for r in stock["methods"]}["pt2"]
    # DeepSpeed's memory-efficient linear saves every frozen linear's input: more activations for P-Tuning v2
    assert pt2_stock["gpu_bytes"]["activations"] > pt2["gpu_bytes"]["activations"]
    assert main(["--backbone", "tiny-bert", "--seq_len", "16"]) == 0
    assert "DeepSpeed settings from ds_configs/zero3.json" in capsys.readouterr().out


def test_saved_weight_views_by_hand(tiny):
    """torch's linear saves ``weight.t()`` for the input gradient: under ZeRO-3 (more than one rank) that view
    keeps each gathered weight alive until backward. pt2: every linear but layer 0's q/k/v (their input, the
    frozen embeddings, needs no gradient); ft: every linear; DeepSpeed's memory-efficient linear: none."""
    cfg = tiny.config("llama")
    bb = Backbone("llama", cfg)
    h, inter, hd, kv = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_key_value_heads
    qkv = h * cfg.num_attention_heads * hd + 2 * h * kv * hd
    layer = qkv + cfg.num_attention_heads * hd * h + 3 * h * inter
    prof = {m: measure(build_prompted(bb, make_prompt_config(m, 4)), 2, 16, "fp32") for m in ("pt2", "ft")}
    assert prof["pt2"].saved_weights == [4 * (layer - qkv), 4 * layer]
    assert prof["ft"].saved_weights == [4 * layer, 4 * layer]
    assert prof["pt2"].saved_weights_outside == 4 * 2 * h                   # the head's (2, hidden) weight
    assert prof["pt2"].gathered_weights() == 4 * (2 * layer - qkv) + 4 * 2 * h
    assert prof["pt2"].gathered_weights(checkpointing=True) == 4 * layer      # one recomputed layer
    z3 = measure(build_prompted(bb, make_prompt_config("pt2", 4)), 2, 16, "fp32", zero3_linear=True)
    assert z3.gathered_weights() == 0
    f = facts([10], [1000])
    two = estimate(f, Setup(stage=3, nodes=1, gpus_per_node=2), 0, "pt2", saved_weights=123)
    one = estimate(f, Setup(stage=3, nodes=1, gpus_per_node=1), 0, "pt2", saved_weights=123)
    z2 = estimate(f, Setup(stage=2, nodes=1, gpus_per_node=2), 0, "pt2", saved_weights=123)
    assert two.gpu["saved_weights"] == 123 and one.gpu["saved_weights"] == 0 and z2.gpu.get("saved_weights", 0) == 0


def test_cli_cpu_device_adds_the_process_baseline(capsys):
    argv = ["--backbone", "tiny-llama", "--methods", "pt2", "--gpus_per_node", "2", "--dtype", "fp32", "--json"]
    assert main(argv) == 0
    gpu = json.loads(capsys.readouterr().out)["methods"][0]
    assert main(argv[:-1] + ["--device", "cpu", "--baseline_gb", "0.5", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)["methods"][0]
    assert cpu["gpu_bytes"]["process_baseline"] == 2 ** 29 and gpu["gpu_bytes"]["process_baseline"] == 0
    assert cpu["gpu_total_bytes"] == gpu["gpu_total_bytes"] + 2 ** 29
