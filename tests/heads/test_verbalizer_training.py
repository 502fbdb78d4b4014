"""The verbalizer head wired into training and prediction (the linear-head vs verbalizer ablation).

(a) unit: scores are the MLM model's own log-probabilities of the label words at [MASK], only the prompt
trains under pt2, the [MASK] template; (b) end to end: train.py -> export -> predict reproduces the dev
metric; (c) bad input: one-line errors.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM

from megaprompt.backbones import get_adapter
from megaprompt.heads.verbalizer import VerbalizerHead, add_mask_token
from megaprompt.model import build_model
from megaprompt.prompts import PromptConfig
from megaprompt.train import main
from tests.engine.conftest import ROOT, env

MASK, WORDS = 4, [[7], [9]]   # tiny vocabulary of 100: any ids will do


@pytest.fixture
def tiny_mlm(tiny):
    """A fresh tiny BertForMaskedLM per call (pt2 installs its prefix attention into the backbone)."""
    def make():
        torch.manual_seed(0)
        return BertForMaskedLM(tiny.config("bert")).eval()
    return make


def verbalized(mlm, method, **kw):
    head = VerbalizerHead(get_adapter(mlm.config.model_type).mlm_head(mlm), WORDS, mask_token_id=MASK)
    return build_model(mlm.base_model, PromptConfig(method=method, **kw), "cls", 2, head=head).eval()


def test_scores_are_mlm_log_probs_of_label_words_at_mask(tiny_mlm):
    ids = torch.tensor([[2, 11, 12, MASK, 3, 0], [2, 13, MASK, 3, 0, 0], [2, 14, 15, 16, MASK, 3]])
    am = (ids != 0).long()
    # method "head": no prompt, so the backbone's hidden states are exactly those of the plain MLM model
    mlm = tiny_mlm()
    got = verbalized(mlm, "head")(input_ids=ids, attention_mask=am, labels=torch.tensor([0, 1, 1]))
    with torch.no_grad():
        logp = torch.log_softmax(mlm(input_ids=ids, attention_mask=am).logits, dim=-1)
    want = torch.stack([logp[0, 3, [7, 9]], logp[1, 2, [7, 9]], logp[2, 4, [7, 9]]])
    torch.testing.assert_close(got["logits"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["loss"], torch.nn.functional.cross_entropy(want, torch.tensor([0, 1, 1])))


def test_only_the_prompt_trains_under_pt2_and_lester(tiny_mlm):
    for method, prompt in (("pt2", {"prompts.shared.table"}), ("lester", {"prompts.shared.embedding"})):
        model = verbalized(tiny_mlm(), method, prompt_len=3)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == prompt, method
    ft = verbalized(tiny_mlm(), "ft")   # full fine-tuning trains the MLM head too
    assert all(p.requires_grad for p in ft.parameters())
    assert all(p.requires_grad for p in ft.head.mlm.parameters())


def test_pt2_verbalizer_gets_gradients_into_the_prompt_only(tiny_mlm):
    model = verbalized(tiny_mlm(), "pt2", prompt_len=3).train()
    ids = torch.tensor([[2, 11, MASK, 3], [2, 12, MASK, 3]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))["loss"].backward()
    assert model.prompt.table.grad is not None and model.prompt.table.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("prompts."))


def test_add_mask_token_template_and_length_budget():
    from megaprompt.backbones.load import load_tokenizer
    tok = load_tokenizer("tiny-bert")
    enc = tok("good film", "really")
    feats = [{k: list(v) for k, v in enc.items()} | {"labels": 1}]
    (out,) = add_mask_token(feats, tok, max_seq_len=64)
    assert tok.convert_ids_to_tokens(out["input_ids"]) == ["[CLS]", "good", "film", "[SEP]", "really", "[MASK]",
                                                           "[SEP]"]
    assert out["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1] and out["attention_mask"] == [1] * 7
    assert out["labels"] == 1 and len(feats[0]["input_ids"]) == 6   # the input is not modified
    (cut,) = add_mask_token(feats, tok, max_seq_len=6)     # already at the budget: the last real token goes
    assert tok.convert_ids_to_tokens(cut["input_ids"]) == ["[CLS]", "good", "film", "[SEP]", "[MASK]", "[SEP]"]
    assert cut["token_type_ids"] == [0, 0, 0, 0, 1, 1]


# ----------------------------------------------------------------------------- end to end
def test_train_export_predict_round_trip(tmp_path):
    out = tmp_path / "run"
    # seed 1: a run whose 6-step dev predictions are not all one class (seed 42's are), so the reproduction
    # also checks that predict rebuilds the same randomly initialised tiny MLM head as training did
    cmd = [sys.executable, "megaprompt/train.py", "--backbone", "tiny-bert", "--task", "demo",
           "--head_type", "verbalizer", "--label_words", "bad,good", "--max_steps", "6", "--batch_size", "8",
           "--seed", "1", "--output_dir", str(out), "--ds_config", "ds_configs/zero3.json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert set(load_file(str(out / "export" / "prompts" / "shared.safetensors"))) == {"table"}
    # the frozen MLM head comes from the backbone, not the export
    assert load_file(str(out / "export" / "heads" / "demo.safetensors")) == {}
    meta = json.loads((out / "export" / "heads" / "demo.json").read_text())
    assert meta["head_type"] == "verbalizer" and meta["label_words"] == ["bad", "good"]

    proc = subprocess.run([sys.executable, "-m", "megaprompt.predict", "--export", str(out / "export"),
                           "--split", "dev", "--output_dir", str(tmp_path / "pred")],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "pred" / "demo_dev_metrics.json").read_text())["metrics"]
    best = json.loads((out / "metrics.json").read_text())["best"]
    assert got["accuracy"] == best["accuracy"]
    assert got["macro_f1"] == pytest.approx(best["macro_f1"], abs=1e-9)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


@pytest.mark.parametrize("extra, needle", [
    (["--task", "conll03"], "needs a classification task; conll03 has a 'tag' head"),
    (["--label_words", "bad,good,meh"], "label_words has 3 word(s) but the task has 2 labels"),
    (["--backbone", "tiny-llama"], "needs an encoder with an MLM head"),
    (["--method", "head"], "has nothing to train"),
])
def test_bad_verbalizer_runs_fail_with_one_line(tmp_path, capsys, offline, extra, needle):
    argv = ["--backbone", "tiny-bert", "--task", "demo", "--head_type", "verbalizer", "--output_dir",
            str(tmp_path / "out"), "--ds_config", str(ROOT / "ds_configs" / "zero3.json"), *extra]
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert lines and needle in lines[-1], lines


@pytest.mark.parametrize("extra, needle", [(["--head_type", "mlm"], "head_type='mlm'"),
                                           (["--label_words", "bad,good"], "only applies to --head_type")])
def test_bad_head_flags_are_rejected_by_the_parser(capsys, extra, needle):
    with pytest.raises(SystemExit) as exc:
        main(["--backbone", "tiny-bert", *extra])
    assert exc.value.code == 2 and needle in capsys.readouterr().err
