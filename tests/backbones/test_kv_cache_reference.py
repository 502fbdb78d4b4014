"""Cross-check against an independent reference: transformers' own KV-cache route.

P-Tuning v2's original code fed the prefix as ``past_key_values``. With the same prefix tensors, a
``DynamicCache`` pre-filled per layer (``cache.update(k, v, layer_idx)``), explicit position ids for the real
tokens (what the bare model would use without a cache) and an attention mask over [prefix ; real], the bare
transformers model must produce the same real-token outputs as megaprompt's attention-interface route.
DeBERTa-v2 has no cache path in transformers 5: ``test_deberta_reference.py`` checks it against a
hand-written disentangled attention instead.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig

P = 4
CACHE_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "llama", "mistral", "qwen2", "qwen3", "glm4")


def reference_positions(bare, family, ids):
    """Position ids the bare model assigns to these tokens when there is no cache."""
    if family in ("roberta", "xlm-roberta"):  # start at padding_idx + 1, pads keep padding_idx
        return bare.embeddings.create_position_ids_from_input_ids(ids, bare.embeddings.padding_idx)
    return torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)


@pytest.mark.parametrize("ref_family", CACHE_FAMILIES)
@pytest.mark.parametrize("reparam", ["none", "mlp"])
def test_prefix_attention_matches_kv_cache_route(tiny, ref_family, reparam, capture_hidden):
    bb = tiny.backbone(ref_family)
    bare = copy.deepcopy(bb)
    model = build_model(bb, PromptConfig(method="pt2", prompt_len=P, prefix_dropout=0.0, reparam=reparam,
                                         mlp_hidden=16), "cls", 2, head_dropout=0.0).eval()
    ids = tiny.ids(2, 6, seed=7)
    mask = torch.ones_like(ids)
    ids[1, -2:], mask[1, -2:] = tiny.pad_id(ref_family), 0           # right padding
    prefix_mask = torch.ones(2, P, dtype=torch.bool)
    prefix_mask[1, 1] = False                                           # a per-example hidden slot

    cap = capture_hidden(model.backbone)
    with torch.no_grad():
        model(ids, mask, prefix_mask=prefix_mask)
        x = model.prompt()                                              # (L, 2, K, P, d); eval: no dropout
    kv = [(x[i, 0].expand(2, -1, -1, -1), x[i, 1].expand(2, -1, -1, -1)) for i in range(x.shape[0])]
    ours = cap.last

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k.clone(), v.clone(), layer)
    assert cache.get_seq_length() == P
    with torch.no_grad():
        ref = bare(input_ids=ids, attention_mask=torch.cat([prefix_mask.long(), mask], dim=1),
                   position_ids=reference_positions(bare, ref_family, ids), cache=cache).last_hidden_state

    real = mask.bool()
    assert ref.shape == ours.shape
    assert (ours[real] - ref[real]).abs().max().item() <= 1e-5

    # Non-vacuous: the bare model without the prefix cache differs.
    with torch.no_grad():
        plain = bare(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (plain[real] - ref[real]).abs().max().item() > 1e-3
