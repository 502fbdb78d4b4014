"""Built-in backbone shapes for cost estimates: the paper's backbones and current decoders.

Every preset is a transformers config of a *supported* family, so the cost tools build the very
``PromptedModel`` megaprompt trains (on the meta device: no weights). Values are the public ``config.json``
values of the named checkpoints. The backbone is ``AutoModel`` (no LM/MLM head), as in training, so decoder
counts exclude an untied ``lm_head`` (Llama-2-7B: 6.74B with it, 6.61B without).

Approximations (documented in README.md (Costs section)):

* ``deberta-xlarge`` is DeBERTa **v1** (model_type ``deberta``, not supported here). It is modelled as
  ``deberta-v2`` with the v1 shape and ``share_att_key=False`` (separate positional key/query projections,
  as v1). v2 gives q/k/v and pos-key projections a bias where v1 has ``q_bias``/``v_bias`` only: +2*hidden
  per layer, +98,304 parameters in all (0.013%).
* ``glm-2b`` / ``glm-10b`` (GLM, Du et al. 2022; English checkpoints, GPT-2 BPE vocabulary padded to 50304)
  are not a transformers family. Their layer is Megatron's GPT-2 block: fused QKV + output projection,
  two LayerNorms, a 4*hidden GeLU MLP, all with biases = 12h^2 + 13h parameters, exactly a BERT layer.
  Embeddings: words (50304, h), positions (1025, h) and block positions (1025, h); one final LayerNorm.
  They are modelled as BERT without pooler, ``max_position_embeddings=1025`` and ``type_vocab_size=1025``
  (the token-type table stands in for the block-position table; BERT's embedding LayerNorm for GLM's final
  one): the parameter count is exact, the shapes of every prefix (48 layers x 64 heads x 64) are exact.
  GLM's attention is bidirectional on the context and causal on the blank - a BERT-shaped model has the
  same parameters and, for activations, the same tensors. (glm-10b-chinese uses vocab 50048.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    model_type: str
    config: dict[str, Any]
    source: str                      # the checkpoint whose config.json this reproduces
    note: str = ""
    pooler: bool = True              # BERT-family AutoModel has a pooler; the GLM stand-ins do not
    paper: bool = False              # a backbone of the P-Tuning v2 paper
    tags: tuple[str, ...] = field(default_factory=tuple)


def _bert(h: int, layers: int, heads: int, vocab: int, **kw: Any) -> dict[str, Any]:
    return dict(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * h,
                vocab_size=vocab, **kw)


def _llama(h: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, **kw: Any) -> dict[str, Any]:
    return dict(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=ffn, vocab_size=vocab, tie_word_embeddings=False, **kw)


PRESETS: dict[str, Preset] = {
    # ---- encoders of the paper (and BERT-base for hand-checkable counts) ---------------------------------
    "bert-base-uncased": Preset("bert", _bert(768, 12, 12, 30522, max_position_embeddings=512, type_vocab_size=2),
                                "google-bert/bert-base-uncased"),
    "bert-large-cased": Preset("bert", _bert(1024, 24, 16, 28996, max_position_embeddings=512, type_vocab_size=2),
                               "google-bert/bert-large-cased (the official P-tuning-v2 scripts' BERT)", paper=True),
    "roberta-large": Preset("roberta", _bert(1024, 24, 16, 50265, max_position_embeddings=514, type_vocab_size=1,
                                             pad_token_id=1, layer_norm_eps=1e-5),
                            "FacebookAI/roberta-large", paper=True),
    "deberta-xlarge": Preset("deberta-v2", _bert(1024, 48, 16, 50265, max_position_embeddings=512, type_vocab_size=0,
                                                 relative_attention=True, pos_att_type=["c2p", "p2c"],
                                                 max_relative_positions=-1, position_buckets=-1,
                                                 position_biased_input=False, share_att_key=False,
                                                 norm_rel_ebd="none", layer_norm_eps=1e-7),
                             "microsoft/deberta-xlarge (v1)",
                             "v1 modelled as deberta-v2 with share_att_key=False: +98,304 params (+0.013%)",
                             paper=True),
    "deberta-v2-xxlarge": Preset("deberta-v2", dict(
        hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, intermediate_size=6144, vocab_size=128100,
        attention_head_size=64, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
        pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_buckets=256, position_biased_input=False,
        share_att_key=True, norm_rel_ebd="layer_norm", conv_kernel_size=3, conv_act="gelu", layer_norm_eps=1e-7),
        "microsoft/deberta-v2-xxlarge", paper=True),
    "glm-2b": Preset("bert", _bert(2048, 36, 32, 50304, max_position_embeddings=1025, type_vocab_size=1025),
                     "THUDM/glm-2b (blocklm-2B)", "GLM as BERT-shaped stand-in, exact parameter count",
                     pooler=False, paper=True),
    "glm-10b": Preset("bert", _bert(4096, 48, 64, 50304, max_position_embeddings=1025, type_vocab_size=1025),
                      "THUDM/glm-10b (blocklm-10B)", "GLM as BERT-shaped stand-in, exact parameter count",
                      pooler=False, paper=True),
    # ---- current decoders --------------------------------------------------------------------------------
    "llama-2-7b": Preset("llama", _llama(4096, 32, 32, 32, 11008, 32000, max_position_embeddings=4096,
                                         rms_norm_eps=1e-5), "meta-llama/Llama-2-7b-hf"),
    "llama-2-13b": Preset("llama", _llama(5120, 40, 40, 40, 13824, 32000, max_position_embeddings=4096,
                                          rms_norm_eps=1e-5), "meta-llama/Llama-2-13b-hf"),
    "llama-3-8b": Preset("llama", _llama(4096, 32, 32, 8, 14336, 128256, max_position_embeddings=8192,
                                         rms_norm_eps=1e-5, rope_theta=500000.0), "meta-llama/Meta-Llama-3-8B"),
    "codellama-34b": Preset("llama", _llama(8192, 48, 64, 8, 22016, 32000, max_position_embeddings=16384,
                                            rms_norm_eps=1e-5, rope_theta=1000000.0),
                            "codellama/CodeLlama-34b-hf", "fills the 14B-70B gap of the size plot"),
    "llama-3-70b": Preset("llama", _llama(8192, 80, 64, 8, 28672, 128256, max_position_embeddings=8192,
                                          rms_norm_eps=1e-5, rope_theta=500000.0), "meta-llama/Meta-Llama-3-70B"),
    "qwen2.5-7b": Preset("qwen2", _llama(3584, 28, 28, 4, 18944, 152064, max_position_embeddings=131072,
                                         rms_norm_eps=1e-6, rope_theta=1000000.0), "Qwen/Qwen2.5-7B"),
    "qwen2.5-14b": Preset("qwen2", _llama(5120, 48, 40, 8, 13824, 152064, max_position_embeddings=131072,
                                          rms_norm_eps=1e-5, rope_theta=1000000.0), "Qwen/Qwen2.5-14B"),
}

# The presets the size plot walks through (about 350M -> 70B).
PLOT_PRESETS = ("bert-large-cased", "deberta-xlarge", "deberta-v2-xxlarge", "glm-2b", "llama-2-7b", "glm-10b",
                "llama-2-13b", "qwen2.5-14b", "codellama-34b", "llama-3-70b")


def preset_names() -> list[str]:
    return list(PRESETS)
