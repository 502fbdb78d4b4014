"""Property-based fuzzing of the readers of user-written configuration: arbitrary bytes in a recipe, a DeepSpeed
JSON or a sweep grid give either a valid result or the project's own one-line error, never another exception.
(The data readers are fuzzed in tests/tasks.)"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.sweep import load_grid_file
from megaprompt.config import build_config, load_recipe
from megaprompt.engine.ds_config import DSConfigError, read_ds_config
from megaprompt.options import FieldError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["lr", "seed", "prompt_len", "task", "method", "prompt_layers", "epochs", "backbone", "gradient_checkpointing",
        "zero_optimization", "stage", "offload_optimizer", "device", "bf16", "enabled", "grid", "checkpoint",
        "load_universal"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["nan", "inf", "-1", "auto", "cpu", "last:99", "1e-2"]))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                    max_leaves=10)
# raw bytes, YAML/JSON-looking text built from the keys, and structured documents
BLOBS = st.one_of(st.binary(max_size=200),
                  st.lists(st.sampled_from([*KEYS, ":", " ", "\n", "[", "]", "{", "}", ",", "-", "'", '"', "\xff",
                                            "1", "nan", "\t"]), max_size=40).map("".join).map(str.encode),
                  DOCS.map(lambda d: json.dumps(d).encode()))


# DeepSpeed-shaped documents: known sections holding scalars or objects of known keys holding anything
SECTIONS = ["zero_optimization", "bf16", "fp16", "checkpoint", "optimizer", "nebula", "train_batch_size",
            "train_micro_batch_size_per_gpu", "gradient_clipping"]
SECTION_KEYS = ["stage", "offload_optimizer", "offload_param", "device", "enabled", "load_universal", "writer",
                "reduce_bucket_size", "stage3_prefetch_bucket_size", "params", "lr"]
DS_DOCS = st.dictionaries(st.sampled_from(SECTIONS),
                          st.one_of(SCALARS, st.dictionaries(st.sampled_from(SECTION_KEYS), DOCS, max_size=3)),
                          max_size=3).map(lambda d: json.dumps(d).encode())


def _write(data: bytes) -> Path:
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".txt")
    f.write(data)
    f.close()
    return Path(f.name)


def _one_line(err: BaseException) -> None:
    assert "\n" not in str(err) and str(err)


@SETTINGS
@given(BLOBS)
def test_recipe_reader(data):
    path = _write(data)
    try:
        build_config(load_recipe(str(path)))
    except (ValueError, FieldError) as err:      # FieldError is a ValueError: the one-line errors
        _one_line(err)
    finally:
        path.unlink()


@SETTINGS
@given(st.one_of(BLOBS, DS_DOCS))
def test_ds_config_reader(data):
    path = _write(data)
    try:
        read_ds_config(str(path))
    except DSConfigError as err:
        _one_line(err)
    finally:
        path.unlink()


@SETTINGS
@given(BLOBS)
def test_sweep_grid_reader(data):
    path = _write(data)
    try:
        grid = load_grid_file(path)
        assert grid and all(isinstance(v, list) and v for v in grid.values())
    except ValueError as err:
        _one_line(err)
    finally:
        path.unlink()
