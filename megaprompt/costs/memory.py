"""Per-GPU (and per-node CPU) training memory of full fine-tuning vs P-Tuning v2 under DeepSpeed ZeRO.

``megaprompt-memory`` (``megaprompt/costs/cli.py``, ``tools/memory.py``). Parameter sizes come from the real ``PromptedModel`` built on the
meta device (``megaprompt.costs.params``); activations from a meta-device forward
(``megaprompt.costs.activations``). Everything else is the byte accounting below.

Notation: N = data-parallel GPUs (nodes x GPUs per node); w = bytes of the training dtype (bf16/fp16 2,
fp32 4); g = bytes of the gradient-accumulation dtype (DeepSpeed's default: the model dtype, so g = w);
mixed = w < 4; T, F = trainable and frozen parameter sets; part(n) = ceil(n / N), per parameter (ZeRO-3 pads
every parameter to a multiple of N; ZeRO-1/2 pad the flat trainable group).

Sources
-------
* ZeRO paper (Rajbhandari et al., SC'20, Sec. 3 and Fig. 1): mixed-precision Adam keeps per trained
  parameter 2 (fp16/bf16 weight) + 2 (gradient) + 12 (fp32 master, momentum, variance) = 16 bytes;
  stage 1 partitions the 12, stage 2 also the gradient, stage 3 also the weight: 2+2+12/N, 2+(2+12)/N,
  (2+2+12)/N.
* DeepSpeed's estimator ``estimate_zero3_model_states_mem_needs`` (deepspeed/runtime/zero/stage3.py):
  GPU = 4*largest_layer + 18*P/N without offload; with optimizer+param offload GPU = 4*largest_layer and
  CPU = 18*P/N per GPU (x1.5 safety factor, which we do not apply). It assumes every parameter trains.
* What DeepSpeed 0.19 really allocates (read in deepspeed/runtime/zero/stage3.py, stage_1_and_2.py,
  partition_parameters.py), which this module follows:

  - Frozen parameters never reach the optimizer: only their low-precision copy exists, partitioned at
    construction by ``zero.Init`` under ZeRO-3 (w*part(n)), replicated under stages 0-2 (w*n).
  - ZeRO-3 trainable parameters (``DeepSpeedZeroOptimizer_Stage3``): the low-precision partition is moved
    into one flat buffer (``lp_param_buffer``, w*part); ``grad_partitions_flat_buffer`` holds the reduced
    gradient partition (g*part); ``_create_fp32_partitions`` makes the fp32 master partition
    (``fp32_partitioned_groups_flat``, 4*part); Adam's ``exp_avg`` and ``exp_avg_sq`` are fp32 (8*part).
    Mixed precision: 2+2+4+8 = 16 bytes/N (the paper's number). In fp32 the source *means* to alias the
    master partition to the parameter partition (same dtype and device: no copy), but it tests
    ``tensor.device == self.device`` where ``self.device`` is the accelerator's device *name*, a string
    ('cpu', 'cuda:0'); a ``torch.device`` never equals a string, so the copy is always made - measured by
    benchmarks/memory_check.py: fp32 costs 4+4+4+8 = 20 bytes/N. At each step
    ``_prepare_fp32_grad_for_sub_group`` flattens the gradient partition and casts it to fp32 (transient,
    one sub-group of at most ``sub_group_size`` elements: "step transient").
  - ZeRO-3 optimizer offload: the gradient partition, fp32 master, fp32 gradient
    (``subgroup_gradient_buffer``) and Adam state live in CPU memory: g+4+4+8 = 18 bytes/N per GPU (the
    estimator's 18). Parameter offload moves the partitioned weights to CPU as well.
  - Gathered-parameter buffers (ZeRO-3): parameters of at most ``stage3_param_persistence_threshold``
    elements stay gathered on every GPU (w*n each); while computing, the module in use and the prefetched
    ones are gathered: w*(largest module + min(prefetch bucket, largest module)) - the estimator's
    4*largest_layer for 16-bit; a trainable module's full gradient exists before its reduce-scatter.
  - Saved weights (ZeRO-3, more than one rank, ``memory_efficient_linear: false`` as in
    ds_configs/zero3.json): torch's linear saves ``weight.t()`` - a view - to compute the input gradient,
    frozen weights included. Releasing a parameter swaps its ``.data``; the view keeps the gathered copy
    alive until backward. So without activation checkpointing every layer whose input needs a gradient
    keeps its full weights on every rank from forward to backward (pt2: all layers but layer 0's q/k/v;
    ft: all); with checkpointing only the recomputed layer. Measured on meta with the activations
    (``ActivationProfile.gathered_weights``); found by benchmarks/memory_check.py --scale on a 0.9B model.
  - CPU ranks (``--device cpu``): the "device" is the host, so a rank's figure is its resident set: the
    same components plus ``process_baseline``, the RSS of a training process before any model (python,
    torch, transformers, deepspeed: 0.40 GiB with torch 2.13 CPU and deepspeed 0.19, ``--baseline_gb``).
  - Reduce bucket: with ``contiguous_gradients`` every ZeRO stage >= 1 allocates ``reduce_bucket_size``
    elements (w each; ZeRO-2 with ``overlap_comm`` two of them) - whatever the trainable count. DeepSpeed's
    default 5e8 elements is 1 GB in bf16: for P-Tuning v2 set it near the trainable count.
  - ZeRO-1/2 (``DeepSpeedZeroOptimizer``): weights replicated (w*n); fp32 master partition is always a copy
    (4*part, even in fp32); Adam 8*part; gradients: stage 1 full (g*n), stage 2 partitioned (g*part).
  - Stage 0: w*n weights, g*n gradients, 4*n master (mixed only), 8*n Adam, trainable n only.

Activations: bytes autograd saves in one micro-batch forward, measured on meta (see ``activations``), with
GPU fused attention and, under ZeRO-3 with ``memory_efficient_linear`` (DeepSpeed's default), DeepSpeed's
linear that saves every linear input even for frozen weights. CUDA context, allocator fragmentation and
communication temporaries are not included; leave a margin (``--reserve_gb``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from megaprompt.costs.activations import ActivationProfile, measure
from megaprompt.costs.params import (CostInputError, ModelFacts, build_prompted, make_prompt_config, model_facts,
                                     resolve_backbone)

GiB = 2 ** 30
# RSS of a CPU training rank after importing torch 2.13 (CPU), transformers 5 and deepspeed 0.19, before any
# model (benchmarks/memory_scale.py records it as the "imports" phase: 0.40 GiB on this project's machine)
CPU_BASELINE_GIB = 0.40
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
METHOD_NAMES = {"ft": "full fine-tuning", "pt2": "P-Tuning v2", "lester": "prompt tuning (Lester)",
                "head": "linear probe (head only)"}
COMPONENTS = ("frozen_weights", "trainable_weights", "gradients", "master_weights", "optimizer_states",
              "gathered_buffers", "saved_weights", "step_transient", "activations", "process_baseline")
MODEL_STATES = ("frozen_weights", "trainable_weights", "gradients", "master_weights", "optimizer_states")


@dataclass
class Setup:
    """Hardware and DeepSpeed settings. Defaults are DeepSpeed's (and ds_configs/zero3.json's)."""

    stage: int = 3
    nodes: int = 1
    gpus_per_node: int = 8
    dtype: str = "bf16"
    grad_accum_dtype: str | None = None          # None: the model dtype (DeepSpeed's default)
    offload_optimizer: bool = False
    offload_param: bool = False
    checkpointing: bool = False
    batch_size: int = 8                           # micro-batch per GPU
    seq_len: int = 128
    reduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    persistence_threshold: int = 100_000
    contiguous_gradients: bool = True
    overlap_comm: bool = True
    sub_group_size: int = 1_000_000_000
    memory_efficient_linear: bool = True
    fused_attention: bool = True
    ds_config: str | None = None                  # the DeepSpeed JSON these settings were read from
    device: str = "gpu"                           # "cpu": ranks on CPU (gloo); device memory = process RSS
    baseline_bytes: int = 0                       # the process before any model (CPU: python/torch/deepspeed)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    def validate(self) -> None:
        if self.stage not in (0, 1, 2, 3):
            raise CostInputError(f"ZeRO stage {self.stage}: expected 0, 1, 2 or 3")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise CostInputError(f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s): need at least 1 of each")
        if self.dtype not in DTYPE_BYTES:
            raise CostInputError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPE_BYTES)}")
        if self.grad_accum_dtype not in (None, *DTYPE_BYTES):
            raise CostInputError(f"grad_accum_dtype {self.grad_accum_dtype!r}: expected one of "
                                 f"{', '.join(DTYPE_BYTES)}")
        if self.offload_param and self.stage != 3:
            raise CostInputError(f"parameter offload needs ZeRO stage 3 (got stage {self.stage})")
        if self.offload_optimizer and self.stage == 0:
            raise CostInputError("optimizer offload needs ZeRO stage 1, 2 or 3 (got stage 0)")
        if self.device not in ("gpu", "cpu"):
            raise CostInputError(f"device {self.device!r}: expected gpu or cpu")
        if self.batch_size < 1 or self.seq_len < 1:
            raise CostInputError(f"batch_size {self.batch_size}, seq_len {self.seq_len}: both must be >= 1")


@dataclass
class Estimate:
    """Bytes per GPU (``gpu``) and per GPU's share of host memory (``cpu``) for one method and setup."""

    method: str
    world: int
    params_trainable: int
    params_frozen: int
    gpu: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, int] = field(default_factory=dict)
    gpus_per_node: int = 1

    @property
    def gpu_total(self) -> int:
        return sum(self.gpu.values())

    @property
    def cpu_per_node(self) -> int:
        return sum(self.cpu.values()) * min(self.gpus_per_node, self.world)

    @property
    def model_states(self) -> int:
        """Per-rank bytes of weights, gradients, master weights and optimizer states, wherever they live."""
        return sum(self.gpu.get(k, 0) + self.cpu.get(k, 0) for k in MODEL_STATES)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "world": self.world, "trainable_params": self.params_trainable,
                "frozen_params": self.params_frozen, "gpu_bytes": dict(self.gpu), "cpu_bytes_per_gpu": dict(self.cpu),
                "gpu_total_bytes": self.gpu_total, "cpu_per_node_bytes": self.cpu_per_node,
                "model_state_bytes": self.model_states}


def _part(sizes: Sequence[int], n: int) -> int:
    return sum(-(-s // n) for s in sizes)


def estimate(facts: ModelFacts, setup: Setup, activations: int = 0, method: str = "",
             saved_weights: int = 0) -> Estimate:
    """The memory of one rank. ``activations``: bytes from ``activations.measure`` (0 to leave out);
    ``saved_weights``: full weights autograd keeps through views (``ActivationProfile.gathered_weights``),
    extra memory only under ZeRO-3 with more than one rank (elsewhere they are the weights themselves)."""
    setup.validate()
    n = setup.world
    if n > facts.n_total:
        raise CostInputError(f"{n} GPUs but only {facts.n_total} parameters to partition")
    w = DTYPE_BYTES[setup.dtype]
    g = DTYPE_BYTES[setup.grad_accum_dtype or setup.dtype]
    mixed = w < 4
    T, F = facts.trainable, facts.frozen
    nt, nf = facts.n_trainable, facts.n_frozen
    gpu = dict.fromkeys(COMPONENTS, 0)
    cpu = dict.fromkeys(COMPONENTS, 0)
    opt = cpu if setup.offload_optimizer else gpu
    bucket = setup.reduce_bucket_size * w if (setup.contiguous_gradients and nt) else 0

    if setup.stage == 3:
        tp, fp = _part(T, n), _part(F, n)
        wloc = cpu if setup.offload_param else gpu
        wloc["frozen_weights"] = w * fp
        wloc["trainable_weights"] = w * tp
        opt["gradients"] = g * tp + (4 * tp if setup.offload_optimizer else 0)   # + fp32 grad buffer on CPU
        opt["master_weights"] = 4 * tp   # a copy even in fp32 (see the module docstring)
        opt["optimizer_states"] = 8 * tp
        if not setup.offload_optimizer and tp:
            sub = min(tp, setup.sub_group_size)
            gpu["step_transient"] = g * sub + (4 * sub if g != 4 else 0)
        # One rank gathers nothing: a "gathered" parameter is a view of its (whole) partition.
        persistent = sum(s for s in T + F if s <= setup.persistence_threshold) if n > 1 else 0
        live = facts.largest_module + min(setup.prefetch_bucket_size, facts.largest_module)
        live = min(live, sum(s for s in T + F if s > setup.persistence_threshold)) if n > 1 else 0
        gpu["gathered_buffers"] = w * (persistent + live) + g * facts.largest_trainable_module + bucket
        gpu["saved_weights"] = saved_weights if n > 1 else 0
    elif setup.stage in (1, 2):
        tp = -(-nt // n)
        gpu["frozen_weights"] = w * nf
        gpu["trainable_weights"] = w * nt
        if setup.offload_optimizer:
            cpu["gradients"] = 4 * tp + w * tp           # fp32 grad partition + bit16 staging buffer
            gpu["gradients"] = g * nt if setup.stage == 1 else 0
        else:
            gpu["gradients"] = g * nt if setup.stage == 1 else g * tp
            gpu["step_transient"] = 4 * tp if tp else 0
        opt["master_weights"] = 4 * tp                   # always a copy in stages 1-2, even in fp32
        opt["optimizer_states"] = 8 * tp
        gpu["gathered_buffers"] = bucket * (2 if setup.stage == 2 and setup.overlap_comm else 1)
    else:
        gpu["frozen_weights"] = w * nf
        gpu["trainable_weights"] = w * nt
        gpu["gradients"] = g * nt
        gpu["master_weights"] = 4 * nt if mixed else 0
        gpu["optimizer_states"] = 8 * nt
    gpu["activations"] = activations
    gpu["process_baseline"] = setup.baseline_bytes
    return Estimate(method, n, nt, nf, {k: v for k, v in gpu.items()}, {k: v for k, v in cpu.items() if v},
                    setup.gpus_per_node)


# ---- one method on one backbone ---------------------------------------------------------------------------
@dataclass
class MethodCosts:
    """Everything N-independent for one (backbone, method): sizes and activation profile."""

    backbone: str
    method: str
    facts: ModelFacts
    profile: ActivationProfile | None


def prepare(backbone: str, method: str, setup: Setup, prompt_len: int = 16, reparam: str = "none",
            mlp_hidden: int = 512, prompt_layers: str = "all", head_kind: str = "cls", num_labels: int = 2,
            with_activations: bool = True) -> MethodCosts:
    bb = resolve_backbone(backbone)
    cfg = make_prompt_config(method, prompt_len, reparam, mlp_hidden, prompt_layers)
    model = build_prompted(bb, cfg, head_kind, num_labels)
    facts = model_facts(model, backbone)
    prof = None
    if with_activations:
        prof = measure(model, setup.batch_size, setup.seq_len, setup.dtype, setup.fused_attention,
                       zero3_linear=setup.stage == 3 and setup.memory_efficient_linear)
    return MethodCosts(backbone, method, facts, prof)


def estimate_for(mc: MethodCosts, setup: Setup) -> Estimate:
    act = mc.profile.total(setup.checkpointing) if mc.profile is not None else 0
    saved = mc.profile.gathered_weights(setup.checkpointing) if mc.profile is not None else 0
    return estimate(mc.facts, setup, act, mc.method, saved)


def gpu_counts(gpus_per_node: int, max_gpus: int) -> list[int]:
    """Candidate data-parallel sizes: 1..gpus_per_node on one node, then whole nodes."""
    out = list(range(1, min(gpus_per_node, max_gpus) + 1))
    k = 2
    while k * gpus_per_node <= max_gpus:
        out.append(k * gpus_per_node)
        k += 1
    return out


def min_gpus(mc: MethodCosts, setup: Setup, gpu_bytes: float, max_gpus: int = 4096,
             cpu_node_bytes: float | None = None) -> int | None:
    """The smallest GPU count whose per-GPU total fits ``gpu_bytes`` (and host memory, if given)."""
    for n in gpu_counts(setup.gpus_per_node, max_gpus):
        if n > mc.facts.n_total:
            break
        s = replace(setup, nodes=math.ceil(n / setup.gpus_per_node), gpus_per_node=min(n, setup.gpus_per_node))
        est = estimate_for(mc, s)
        if est.gpu_total <= gpu_bytes and (cpu_node_bytes is None or est.cpu_per_node <= cpu_node_bytes):
            return n
    return None
