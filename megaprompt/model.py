"""``PromptedModel``: a backbone, an optional prompt and a task head - the unit megaprompt trains.

Which parameters train is decided by the method (torchtune-style protocol, never by name matching):
``trainable_modules()`` returns the prompt and head (pt2, lester), the head (head), or everything (ft), and
``configure_trainable`` freezes all the rest. A head may keep parts frozen although it trains (the
verbalizer's pretrained MLM head) by listing them in ``frozen_submodules()``; only ft trains those too.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from megaprompt.backbones import BackboneSpec, PrefixHolder, PrefixState, get_adapter
from megaprompt.heads import build_head
from megaprompt.prompts import PromptConfig, build_prompt


class PromptedModel(nn.Module):
    def __init__(self, backbone: nn.Module, spec: BackboneSpec, prompt_cfg: PromptConfig, head: nn.Module,
                 head_kind: str = "cls") -> None:
        super().__init__()
        self.backbone, self.spec, self.prompt_cfg, self.head_kind = backbone, spec, prompt_cfg, head_kind
        self.prompt = build_prompt(prompt_cfg, spec)
        self.head = head
        self.holder: PrefixHolder | None = None
        if prompt_cfg.method == "pt2":
            self.holder = get_adapter(spec.model_type).install(backbone)
        self.configure_trainable()

    # ---- which parameters train -------------------------------------------------------------------------
    def trainable_modules(self) -> list[nn.Module]:
        method = self.prompt_cfg.method
        if method == "ft":
            return [self.backbone, self.head]
        if method == "head":
            return [self.head]
        return [self.prompt, self.head]

    def configure_trainable(self) -> None:
        self.requires_grad_(False)
        for module in self.trainable_modules():
            module.requires_grad_(True)
        if self.prompt_cfg.method != "ft":
            for module in getattr(self.head, "frozen_submodules", list)():
                module.requires_grad_(False)

    def enable_gradient_checkpointing(self, every_n_layers: int = 1) -> None:
        """Activation checkpointing of every ``every_n_layers``-th backbone layer (default: all), non-reentrant.

        Non-reentrant is required, not a preference: with ``use_reentrant=True`` each layer's recompute
        back-propagates separately into the shared prefix graph (MLP output, views), which autograd frees
        after the first layer ("backward through the graph a second time").

        transformers also hooks the input embeddings to require grad (a reentrant-checkpointing workaround);
        non-reentrant checkpointing does not need it, and with a frozen backbone it only adds a useless
        backward through layer 0 down to the embeddings, so the hook is removed. ``every_n_layers=2``
        recomputes half the layers (about 1.27x the un-checkpointed pt2 step instead of 1.5x, on CPU).
        """
        kwargs = {"use_reentrant": False}
        if hasattr(self.backbone, "activation_checkpointing_enable"):      # transformers >= 5.x
            self.backbone.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers)
        elif every_n_layers == 1:
            self.backbone.gradient_checkpointing_enable(kwargs)
        else:
            raise ValueError("every_n_layers > 1 needs transformers' activation_checkpointing_enable")
        self.backbone.disable_input_require_grads()

    # ---- forward ----------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                prefix_mask: torch.Tensor | None = None, **extra: Any) -> dict[str, torch.Tensor | None]:
        """Inputs (B, L) - or (B, C, L) for multiple choice, flattened to (B*C, L) for the backbone.

        ``prefix_mask`` (B, P) bool masks prefix slots out of attention (True = attend); None = all visible.
        """
        if input_ids.dim() == 3:  # multiple choice: every choice is its own sequence
            extra["num_choices"] = input_ids.shape[1]
            input_ids, attention_mask = input_ids.flatten(0, 1), attention_mask.flatten(0, 1)
            if token_type_ids is not None:
                token_type_ids = token_type_ids.flatten(0, 1)
        bsz = input_ids.shape[0]
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        n_prompt = 0
        if self.prompt is not None and self.prompt.kind == "prefix":
            self.holder.state = PrefixState(self.prompt(bsz), prefix_mask)
            kwargs["input_ids"] = input_ids
        elif self.prompt is not None:  # input prompt: prepend to word embeddings, it takes positions 0..P-1
            n_prompt = self.prompt.prompt_len
            embeds = self.backbone.get_input_embeddings()(input_ids)
            prompt = self.prompt(bsz).to(embeds.dtype)
            kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
            ones = attention_mask.new_ones(bsz, n_prompt) if prefix_mask is None else prefix_mask.to(attention_mask)
            kwargs["attention_mask"] = torch.cat([ones, attention_mask], dim=1)
            if token_type_ids is not None:
                kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros(bsz, n_prompt), token_type_ids], 1)
        else:
            kwargs["input_ids"] = input_ids
        if self.spec.is_decoder:
            # Decoders number positions 0..L-1 by default, so left padding would shift real tokens' RoPE
            # phases; count only attended positions instead (as HF generate does). Right padding: unchanged.
            kwargs["position_ids"] = (kwargs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(**kwargs).last_hidden_state[:, n_prompt:]   # (B, L, H): real tokens only
        # input_ids: heads that look for a token (the verbalizer's [MASK]) find it; the others ignore it
        return self.head(hidden, attention_mask, labels=labels, input_ids=input_ids, **extra)


def build_model(backbone: nn.Module, prompt_cfg: PromptConfig, head_kind: str, num_labels: int,
                name: str = "", head_dropout: float = 0.1, head: nn.Module | None = None) -> PromptedModel:
    """Wrap a loaded backbone with the prompt method and a freshly initialised head (or ``head``, prebuilt:
    the verbalizer, whose MLM head comes with the backbone)."""
    adapter = get_adapter(backbone.config.model_type)
    spec = adapter.spec(backbone, name)
    if head is None:
        head = build_head(head_kind, spec.hidden_size, num_labels, pooling="last" if spec.is_decoder else "first",
                          dropout=head_dropout)
    return PromptedModel(backbone, spec, prompt_cfg, head, head_kind)
