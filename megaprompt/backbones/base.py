"""Backbone adapters: the only code that knows a transformers model's internals.

An adapter answers, for one model family: the shape facts a prompt needs (``spec``), where its layers and
their self-attention modules are (``layers``, ``attention_modules``), how many positions real tokens may use
(``position_limit``: RoBERTa's offset lives here), whether it has a masked-LM head (``has_mlm_head``,
``mlm_head``: the verbalizer), how to checkpoint a layer (``checkpoint_kwargs``), how to route attention
through the prefix-aware function (``install``), which inputs the bare model takes (``model_inputs``:
decoder position ids live here) and how to call it with a per-call prefix (``forward``). Everything else in
megaprompt talks to backbones only through this protocol.

``fingerprint`` identifies a checkpoint's weights (not only its shape): a prompt trained on one checkpoint
is refused on another of the same shape.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from megaprompt.backbones.attention import ATTN_NAME, PREFIX_KWARG, PrefixState

FINGERPRINT_SAMPLE = 512    # values taken from the middle of each fingerprinted tensor


@dataclass(frozen=True)
class BackboneSpec:
    """Shape facts about a backbone that prompts, heads, exports and tools rely on."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None
    is_decoder: bool          # decoders pool the last real token and attend causally
    name: str = ""
    embedding_size: int = 0   # width of the input word embeddings (ELECTRA/DeBERTa may differ); 0 = hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_from_config(config: Any, is_decoder: bool, name: str = "") -> BackboneSpec:
    """Read a ``BackboneSpec`` from a transformers config (works on meta-device models too)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "attention_head_size", None) \
        or config.hidden_size // heads
    return BackboneSpec(
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        max_positions=getattr(config, "max_position_embeddings", None),
        is_decoder=is_decoder,
        name=name or getattr(config, "_name_or_path", "") or "",
        embedding_size=getattr(config, "embedding_size", None) or config.hidden_size,
    )


class BackboneAdapter:
    """Base adapter for families whose attention goes through ``ALL_ATTENTION_FUNCTIONS`` with ``**kwargs``."""

    model_types: tuple[str, ...] = ()
    mlm_model_types: tuple[str, ...] = ()     # families whose *ForMaskedLM head the verbalizer can use
    is_decoder: bool = False

    def spec(self, model: nn.Module, name: str = "") -> BackboneSpec:
        return spec_from_config(model.config, self.is_decoder, name)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The transformer layers of the bare model, in order."""
        raise NotImplementedError

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The self-attention module of every layer, in layer order."""
        raise NotImplementedError

    def position_limit(self, config: Any) -> int | None:
        """Positions real tokens (plus Lester prompts) may occupy."""
        return getattr(config, "max_position_embeddings", None)

    def has_mlm_head(self, config: Any) -> bool:
        return config.model_type in self.mlm_model_types

    def mlm_head(self, mlm_model: nn.Module) -> nn.Module:
        """The hidden -> vocabulary module of this family's masked-LM model."""
        for name in ("cls", "lm_head", "lm_predictions", "generator_lm_head"):
            head = getattr(mlm_model, name, None)
            if isinstance(head, nn.Module):
                return head
        raise ValueError(f"{type(mlm_model).__name__} has no MLM head (expected a BERT/RoBERTa/DeBERTa *ForMaskedLM)")

    def checkpoint_kwargs(self) -> dict[str, Any]:
        """``torch.utils.checkpoint`` arguments. Non-reentrant is required: with ``use_reentrant=True`` each
        layer's recompute back-propagates separately into the shared prefix graph, which autograd frees after
        the first layer ("backward through the graph a second time")."""
        return {"use_reentrant": False}

    def install(self, model: nn.Module) -> None:
        """Route the model's attention through the prefix-aware function (idempotent per model: the tags live
        on its modules, not on the config, which several models may share)."""
        if all(hasattr(m, "_mp_layer") for m in self.attention_modules(model)):
            return
        current = model.config._attn_implementation or "sdpa"
        # flash kernels take no arbitrary mask; torch SDPA picks a fused kernel on GPU anyway.
        model.config._attn_implementation = ATTN_NAME
        self._tag(model, eager=current == "eager")

    def _tag(self, model: nn.Module, eager: bool) -> None:
        for i, module in enumerate(self.attention_modules(model)):
            # Plain attributes (not submodules): DeepSpeed and state_dict never see them.
            object.__setattr__(module, "_mp_layer", i)
            object.__setattr__(module, "_mp_eager", eager)   # the backbone was loaded eager: keep returning weights

    def model_inputs(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                     inputs_embeds: torch.Tensor | None = None,
                     token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments of the bare model for one batch."""
        out: dict[str, torch.Tensor] = {"attention_mask": attention_mask}
        if input_ids is not None:
            out["input_ids"] = input_ids
        if inputs_embeds is not None:
            out["inputs_embeds"] = inputs_embeds
        if token_type_ids is not None:
            out["token_type_ids"] = token_type_ids
        return out

    def forward(self, model: nn.Module, prefix: PrefixState | None, **inputs: Any) -> Any:
        """Run the bare model with this call's prefix (None: no prefix)."""
        if prefix is not None:
            inputs[PREFIX_KWARG] = prefix
        return model(**inputs)


def _gathered(params: list[nn.Parameter]) -> Any:
    """Full tensors of ZeRO-3 partitioned parameters for the block (a no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed    # only reached inside a ZeRO-3 engine
        return deepspeed.zero.GatheredParameters(params)
    return contextlib.nullcontext()


def fingerprint_tensors(tensors: list[torch.Tensor]) -> str:
    """sha256 over the bf16-rounded middle ``FINGERPRINT_SAMPLE`` values of each tensor (flattened), with its
    shape. bf16 rounding makes fp32 and bf16 loads of one checkpoint agree."""
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1)
        mid = max(0, flat.numel() // 2 - FINGERPRINT_SAMPLE // 2)
        sample = flat[mid:mid + FINGERPRINT_SAMPLE].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(repr(tuple(t.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def fingerprint(model: nn.Module) -> str:
    """Fingerprint of a backbone's weights: its input embeddings and the last parameter of its last layer
    (ZeRO-3 aware). The last *layer*, not the model's last parameter: a bare model and the base model of a
    masked-LM checkpoint (the verbalizer's) differ in an optional pooler, not in their layers."""
    from megaprompt.backbones import get_adapter

    emb = model.get_input_embeddings().weight
    last = list(get_adapter(model.config.model_type).layers(model)[-1].parameters())[-1]
    with _gathered([emb, last]):
        return fingerprint_tensors([emb, last])
