"""Shared fixtures: tiny random backbones of every supported family, built from configs (no downloads).

Parametrisation (via ``pytest_generate_tests``): a test that takes an argument named

* ``family``          runs once per supported family (bert, roberta, xlm-roberta, electra, deberta-v2, llama,
                      mistral, qwen2, qwen3, glm4);
* ``encoder_family``  runs once per encoder family;
* ``decoder_family``  runs once per decoder family.

The ``tiny`` fixture (session scope) builds models: ``tiny.backbone(family)`` is a fresh fp32 copy (eval
mode, dropout 0) of a per-session cached random model, so tests can wrap and mutate it freely.
Decoder configs use ``num_key_value_heads < num_attention_heads`` so grouped-query attention is covered.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

# Tiny models: intra-op threads only add OpenMP spin-waiting (about 3x the CPU time of the whole suite on
# 2 cores). Override with MEGAPROMPT_TEST_THREADS=N.
torch.set_num_threads(int(os.environ.get("MEGAPROMPT_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package is used from the checkout, not installed
    sys.path.insert(0, str(ROOT))

VOCAB = 100
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64)
_ENC = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
_DEC = dict(num_key_value_heads=2, attention_dropout=0.0, pad_token_id=0, head_dim=8)

# family -> AutoConfig.for_model kwargs (model_type is the key)
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(**_COMMON, **_ENC, type_vocab_size=2),
    # RoBERTa-style position ids start at pad_token_id + 1 and skip pads: pad id 1 as in the real models.
    "roberta": dict(**_COMMON, **{**_ENC, "pad_token_id": 1}, type_vocab_size=1),
    "xlm-roberta": dict(**_COMMON, **{**_ENC, "pad_token_id": 1}, type_vocab_size=1),
    "electra": dict(**_COMMON, **_ENC, embedding_size=24, type_vocab_size=2),  # embedding projection path
    "deberta-v2": dict(**_COMMON, **_ENC, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                       max_relative_positions=-1, position_biased_input=False, share_att_key=True,
                       norm_rel_ebd="layer_norm", type_vocab_size=0),
    "llama": dict(**_COMMON, **_DEC),
    "mistral": dict(**_COMMON, **_DEC, sliding_window=None),
    "qwen2": dict(**_COMMON, **_DEC),
    # head_dim != hidden/heads: the spec must read config.head_dim
    "qwen3": dict(**_COMMON, **{**_DEC, "head_dim": 16}),
    "glm4": dict(**_COMMON, **_DEC),
}
ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2")
DECODER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "glm4")
FAMILIES = ENCODER_FAMILIES + DECODER_FAMILIES


def _explicitly_parametrized(metafunc: pytest.Metafunc) -> set[str]:
    names: set[str] = set()
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = argnames.split(",")
        names.update(a.strip() for a in argnames)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = _explicitly_parametrized(metafunc)  # an explicit @pytest.mark.parametrize("family", ...) wins
    for arg, values in (("family", FAMILIES), ("encoder_family", ENCODER_FAMILIES),
                        ("decoder_family", DECODER_FAMILIES)):
        if arg in metafunc.fixturenames and arg not in explicit:
            metafunc.parametrize(arg, values)


class TinyZoo:
    """Factory of tiny random backbones and matching inputs."""

    families = FAMILIES
    encoders = ENCODER_FAMILIES
    decoders = DECODER_FAMILIES
    vocab = VOCAB

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.nn.Module] = {}

    def config(self, family: str, **overrides: Any):
        from transformers import AutoConfig

        kw = {**TINY_CONFIGS[family], **overrides}
        return AutoConfig.for_model(family, **kw)

    def backbone(self, family: str, seed: int = 0, attn_implementation: str | None = None,
                 **overrides: Any) -> torch.nn.Module:
        """A fresh fp32 copy (eval mode) of the cached random backbone for these settings."""
        from transformers import AutoModel

        key = (family, seed, attn_implementation, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in self._cache:
            torch.manual_seed(seed)
            kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
            self._cache[key] = AutoModel.from_config(self.config(family, **overrides), dtype=torch.float32, **kw)
        return copy.deepcopy(self._cache[key]).eval()

    def is_decoder(self, family: str) -> bool:
        return family in DECODER_FAMILIES

    def pad_id(self, family: str) -> int:
        return TINY_CONFIGS[family]["pad_token_id"]

    def ids(self, batch: int, length: int, seed: int = 0) -> torch.Tensor:
        """Random ids that are never a special/pad id (ids 0-4 are avoided)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randint(5, VOCAB, (batch, length), generator=g)


@pytest.fixture(autouse=True)
def _no_leaked_rendezvous(monkeypatch):
    """An in-process run (``train.main``, ``predict.main``) in a world of one writes RANK, WORLD_SIZE,
    MASTER_PORT... into ``os.environ``; a later launcher subprocess inheriting them would rendezvous on that
    stale port (EADDRINUSE while its sockets linger). Every test starts without them and leaves none."""
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def tiny() -> TinyZoo:
    return TinyZoo()


class HiddenCapture:
    """Records the backbone's ``last_hidden_state`` on every forward (an observer, not a stand-in)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.last: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.last = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def remove(self) -> None:
        self.handle.remove()


class PrefixCapture:
    """Records, per attention call, the prefix that layer read (``layer_prefix(module, kwargs)``): what the
    model really passed to the layers in that forward (an observer, not a stand-in)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        from megaprompt.backbones import get_adapter

        self.calls: list[tuple[int, Any]] = []
        self.handles = [m.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                        for i, m in enumerate(get_adapter(backbone.config.model_type).attention_modules(backbone))]

    def _hook(self, layer: int):
        def hook(module, args, kwargs):
            from megaprompt.backbones import layer_prefix
            self.calls.append((layer, layer_prefix(module, kwargs)))
        return hook

    def last(self) -> list[Any]:
        """Per layer, the (key, value, mask) of the most recent call (None: that layer got no prefix)."""
        out: dict[int, Any] = {}
        for layer, prefix in self.calls:
            out[layer] = prefix
        return [out.get(i) for i in range(max(out) + 1)] if out else []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _observers(kind):
    """A fixture body: ``make(module)`` -> a ``kind`` observer; every observer's hooks are removed after the
    test, so a failing test never leaves hooks on a shared module."""
    made: list = []

    def make(module: torch.nn.Module):
        made.append(kind(module))
        return made[-1]

    yield make
    for cap in made:
        cap.remove()


@pytest.fixture
def capture_hidden():
    """``capture_hidden(module)`` -> a ``HiddenCapture``."""
    yield from _observers(HiddenCapture)


@pytest.fixture
def capture_prefix():
    """``capture_prefix(backbone)`` -> a ``PrefixCapture``."""
    yield from _observers(PrefixCapture)
