"""Every recipe under recipes/ loads, names a known task and valid values, and matches the P-Tuning v2
official run-script hyper-parameters it was written from."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from megaprompt.tasks import TASKS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
KEYS = {"backbone", "task", "method", "batch_size", "lr", "prompt_len", "epochs", "hidden_dropout", "max_seq_len",
        "reparam"}
# (task, backbone): (batch, lr, prompt_len, epochs)
EXPECTED = {
    ("boolq", "bert-large-cased"): (32, 5e-3, 40, 100), ("boolq", "roberta-large"): (32, 7e-3, 8, 100),
    ("copa", "bert-large-cased"): (16, 1e-2, 16, 80), ("copa", "roberta-large"): (16, 9e-3, 8, 120),
    ("rte", "bert-large-cased"): (32, 1e-2, 20, 60), ("rte", "roberta-large"): (32, 5e-3, 128, 100),
    ("wic", "bert-large-cased"): (16, 1e-4, 20, 80), ("wic", "roberta-large"): (32, 1e-2, 8, 50),
    ("wsc", "bert-large-cased"): (16, 5e-3, 20, 80), ("wsc", "roberta-large"): (16, 1e-2, 8, 10),
    ("conll03", "roberta-large"): (16, 3e-2, 11, 30),
    ("conll04", "bert-large-cased"): (32, 2e-2, 128, 40), ("conll04", "roberta-large"): (32, 6e-2, 144, 80),
    ("ontonotes", "bert-large-cased"): (16, 1e-2, 16, 30), ("ontonotes", "roberta-large"): (16, 7e-3, 48, 60),
    ("conll12", "bert-large-cased"): (16, 5e-3, 128, 45), ("conll12", "roberta-large"): (32, 5e-3, 64, 45),
    ("conll05", "roberta-large"): (16, 6e-3, 224, 15),
    ("squad", "roberta-large"): (8, 5e-3, 16, 30), ("squad_v2", "roberta-large"): (8, 5e-3, 8, 10),
}
SPECIAL = {("wic", "bert-large-cased"): {"reparam": "mlp"}, ("conll03", "roberta-large"): {"max_seq_len": 152},
           ("conll04", "bert-large-cased"): {"hidden_dropout": 0.2},
           ("squad", "roberta-large"): {"hidden_dropout": 0.2, "max_seq_len": 384},
           ("squad_v2", "roberta-large"): {"hidden_dropout": 0.2, "max_seq_len": 384}}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_one_recipe_per_expected_run():
    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert names == sorted(f"{t}_{b}.yaml" for t, b in EXPECTED)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_values(path):
    cfg = _load(path)
    assert set(cfg) == KEYS
    assert cfg["task"] in TASKS and cfg["method"] == "pt2" and cfg["reparam"] in ("none", "mlp")
    assert cfg["backbone"] in ("bert-large-cased", "roberta-large")
    assert path.stem == f"{cfg['task']}_{cfg['backbone']}"
    assert isinstance(cfg["batch_size"], int) and isinstance(cfg["prompt_len"], int) and isinstance(cfg["epochs"], int)
    assert isinstance(cfg["lr"], float) and 0 < cfg["lr"] < 1 and 0 <= cfg["hidden_dropout"] < 1
    key = (cfg["task"], cfg["backbone"])
    assert (cfg["batch_size"], cfg["lr"], cfg["prompt_len"], cfg["epochs"]) == EXPECTED[key]
    defaults = {"hidden_dropout": 0.1, "max_seq_len": 128, "reparam": "none"}
    defaults.update(SPECIAL.get(key, {}))
    assert {k: cfg[k] for k in defaults} == defaults
