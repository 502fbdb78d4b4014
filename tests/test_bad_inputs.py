"""Every bad input gets one line: a table of user mistakes across train, predict, launch and the tools.

Each case runs the real command-line entry point in-process (``main(argv)``) and asserts:
- exit code 2;
- stderr holds exactly one line that is not a progress log line, it contains the expected words (which name
  the file:line, key or value at fault and what was expected), and there is no traceback;
- the earlier run's directory (a real training run made once for the module) is byte-for-byte unchanged,
  and so is every input file the case planted.
Cases that pass the cheap checks (bad data content) get their own fresh output directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
Z3 = str(ROOT / "ds_configs" / "zero3.json")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")     # the rank-0 logger's progress lines


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("MEGAPROMPT_CACHE", str(tmp_path / "cache"))


def snapshot(d: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mode) of every file below ``d`` (the lock file's holder text may change)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(d))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished tiny-bert run: checkpoints, export, metrics, tb, config.yaml, train.log."""
    from megaprompt.train import main
    out = tmp_path_factory.mktemp("earlier") / "run"
    old = dict(os.environ)
    os.environ.update(HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu",
                      MEGAPROMPT_CACHE=str(tmp_path_factory.mktemp("cache")))
    try:
        assert main(["--backbone", "tiny-bert", "--output_dir", str(out), "--ds_config", Z3, "--max_steps", "2",
                     "--batch_size", "4", "--max_train_examples", "16", "--max_eval_examples", "8",
                     "--prompt_len", "2"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(old)
    return out


def train_argv(out: Path, *extra: str) -> list[str]:
    """The earlier run's own command line (so the identity check passes) plus the case's change."""
    return ["--backbone", "tiny-bert", "--output_dir", str(out), "--ds_config", Z3, "--max_steps", "2",
            "--batch_size", "4", "--max_train_examples", "16", "--max_eval_examples", "8", "--prompt_len", "2",
            *extra]


# ---- planted inputs ------------------------------------------------------------------------------------------
def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def ds(tmp: Path, cfg: object) -> str:
    return str(write(tmp / "ds.json", json.dumps(cfg)))


def rte_dir(tmp: Path, train: str | bytes) -> str:
    row = {"premise": "A cat sat.", "hypothesis": "A cat exists.", "label": "entailment", "idx": 0}
    write(tmp / "rte" / "val.jsonl", json.dumps(row) + "\n")
    write(tmp / "rte" / "train.jsonl", train)
    return str(tmp / "rte")


def copy_export(earlier: Path, tmp: Path) -> Path:
    dest = tmp / "export"
    shutil.copytree(earlier / "export", dest)
    return dest


def nan_export(earlier: Path, tmp: Path) -> str:
    e = copy_export(earlier, tmp)
    (head,) = (e / "heads").glob("*.safetensors")
    t = load_file(str(head))
    t["out.bias"][0] = float("nan")
    save_file(t, str(head))
    return str(e)


def checkpoint_with(out: Path, earlier: Path, state: str | dict | None = None, head: str | None = None) -> Path:
    """A copy of the earlier run's directory with its checkpoint's state.json updated (a dict) or replaced (text),
    or its HEAD.json replaced."""
    shutil.copytree(earlier, out)
    ck = out / "checkpoints"
    tag = sorted(p for p in ck.iterdir() if p.name.startswith("step_"))[-1]
    if isinstance(state, dict):
        state = json.dumps({**json.loads((tag / "state.json").read_text()), **state})
    if state is not None:
        (tag / "state.json").write_text(state)
    if head is not None:
        (ck / "HEAD.json").write_text(head)
    return out


# ---- the cases -----------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    entry: str                       # train | predict | launch | memory | param_ratio | sweep_summary
    argv: Callable[[Path, Path], list[str]]     # (tmp_path, earlier run) -> argv
    expect: str                      # words the one error line must contain
    guards_earlier: bool = True      # the earlier run's directory must stay unchanged
    tags: list[str] = field(default_factory=list)


def T(id: str, extra: list[str] | Callable[[Path, Path], list[str]], expect: str, **kw) -> Case:
    """A train case on the earlier run's directory."""
    if callable(extra):
        return Case(id, "train", lambda t, e: train_argv(e, *extra(t, e)), expect, **kw)
    return Case(id, "train", lambda t, e: train_argv(e, *extra), expect, **kw)


def T_fresh(id: str, extra: Callable[[Path, Path], list[str]], expect: str) -> Case:
    """A train case whose mistake is only found after the cheap checks: its own output directory."""
    return Case(id, "train", lambda t, e: train_argv(t / "fresh", *extra(t, e)), expect)


def recipe(text: str | bytes) -> Callable[[Path, Path], list[str]]:
    return lambda t, e: ["--recipe", str(write(t / "r.yaml", text))]


GOOD_RTE = json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}) + "\n"
CASES: list[Case] = [
    # flags: numbers out of range, not finite, of the wrong type; names that do not exist
    T("lr-nan", ["--lr", "nan"], "--lr: lr=nan: expected a finite number > 0"),
    T("lr-inf", ["--lr", "inf"], "lr=inf: expected a finite number"),
    T("lr-negative", ["--lr", "-1"], "lr=-1.0: expected > 0"),
    T("epochs-negative", ["--epochs", "-1"], "epochs=-1.0: expected >= 0"),
    T("epochs-nan", ["--epochs", "nan"], "epochs=nan: expected a finite number"),
    T("seed-negative", ["--seed", "-1"], "seed=-1: expected >= 0 and < 4294967296"),
    T("seed-too-large", ["--seed", "1e20"], "seed=100000000000000000000: expected >= 0"),
    T("log-every-zero", ["--log_every", "0"], "log_every=0: expected >= 1"),
    T("head-dropout", ["--head_dropout", "1.5"], "head_dropout=1.5: expected >= 0 and < 1"),
    T("prefix-dropout-nan", ["--prefix_dropout", "nan"], "prefix_dropout=nan: expected a finite number"),
    T("hidden-dropout", ["--hidden_dropout", "2"], "hidden_dropout=2.0: expected -1 (keep) or a value in [0, 1)"),
    T("warmup-one", ["--warmup_ratio", "1"], "warmup_ratio=1.0: expected >= 0 and < 1"),
    T("batch-zero", ["--batch_size", "0"], "batch_size=0: expected >= 1"),
    T("batch-fraction", ["--batch_size", "2.5"], "--batch_size: batch_size='2.5': expected int"),
    T("max-steps-inf", ["--max_steps", "inf"], "max_steps='inf': expected int"),
    T("grad-norm-negative", ["--max_grad_norm", "-1"], "max_grad_norm=-1.0: expected >= 0"),
    T("method-unknown", ["--method", "lora"], "method='lora': expected one of pt2, lester, ft, head"),
    T("precision-unknown", ["--precision", "fp8"], "precision='fp8': expected one of auto, fp32, bf16, fp16"),
    T("layers-syntax", ["--prompt_layers", "last:0"], "prompt_layers='last:0': expected all, last:N"),
    T("prompt-len-zero", ["--prompt_len", "0"], "prompt_len=0: expected >= 1 for method pt2"),
    T("init-std-negative", ["--init_std", "-1"], "init_std=-1.0: expected >= 0"),
    T("unknown-flag", ["--prompt_lenght", "4"], "unknown flag --prompt_lenght; did you mean 'prompt_len'?"),
    T("label-words-linear", ["--label_words", "a,b"], "label_words only applies to --head_type verbalizer"),
    T("resume-missing-dir", ["--resume", "/nonexistent/ckpt"], "resume='/nonexistent/ckpt': expected auto, none"),
    # multi-task: task lists, per-task data dirs and settings, sharing, mixing, selection, continuation
    T("tasks-duplicate", ["--task", "demo,demo"], "task='demo,demo': expected distinct names"),
    T("data-dir-pairs", ["--task", "demo,rte", "--data_dir", "demo"], "data_dir='demo': expected NAME=VALUE pairs"),
    T("data-dir-unknown-task", ["--task", "demo,rte", "--data_dir", "cb=/x"], "data_dir names task 'cb', which is not"),
    T("task-settings-key", ["--task_settings", "demo:max_len=3"], "task_settings key 'max_len': expected one of"),
    T("task-settings-small", ["--task_settings", "demo:max_seq_len=4"], "demo: max_seq_len=4: expected >= 8"),
    T("mixing-unknown", ["--mixing", "random"], "mixing='random': expected one of proportional, temperature"),
    T("mixing-temperature", ["--mixing_temperature", "0.5"], "mixing_temperature=0.5: expected >= 1"),
    T("sharing-unknown", ["--prompt_sharing", "task"], "prompt_sharing='task': expected one of shared, shared+task"),
    T("sharing-without-prompt", ["--prompt_sharing", "shared+task", "--method", "head"],
      "prompt_sharing='shared+task' needs a prompt method"),
    T("select-on-unknown", ["--select_on", "rte"], "select_on='rte': expected mean or one of demo"),
    T("init-from-missing", ["--init_from", "/nonexistent/export"], "init_from='/nonexistent/export': expected an"),
    T("init-from-mlp", lambda t, e: ["--init_from", str(e / "export"), "--reparam", "mlp"],
      "init_from loads materialised prompt tables: use --reparam none"),
    T_fresh("init-from-other-method", lambda t, e: ["--init_from", str(e / "export"), "--method", "lester"],
            "method pt2 in the export, lester in this run"),
    T("verbalizer-multi-task", ["--task", "demo,rte", "--head_type", "verbalizer"],
      "--head_type verbalizer takes one task; got demo,rte"),
    T("recipe-tasks-not-list", recipe("tasks: rte\n"), "r.yaml:1: tasks: expected a non-empty list"),
    T("recipe-tasks-bad-key", recipe("tasks:\n  - name: demo\n    max_seq_length: 64\n"),
      "r.yaml:1: tasks[0]: unknown key 'max_seq_length'; did you mean 'max_seq_len'?"),
    T("recipe-tasks-and-task", recipe("task: demo\ntasks: [demo]\n"), "tasks: and task: both given"),
    # recipes: every error names file:line
    T("recipe-missing", ["--recipe", "/nonexistent.yaml"], "--recipe /nonexistent.yaml: no such file"),
    T("recipe-bad-yaml", recipe("lr: [1,\n"), "r.yaml:2: invalid YAML"),
    T("recipe-unknown-key", recipe("lr: 1e-2\nbatchsize: 8\n"), "r.yaml:2: unknown key 'batchsize'"),
    T("recipe-bad-type", recipe("lr: [1, 2]\n"), "r.yaml:1: lr=[1, 2]: expected float"),
    T("recipe-out-of-range", recipe("lr: 1e-2\nseed: -4\n"), "r.yaml:2: seed=-4: expected >= 0"),
    T("recipe-not-utf8", recipe(b"lr: 1e-2\ntask: \xff\n"), "r.yaml:2: not valid UTF-8"),
    T("recipe-a-list", recipe("- lr\n- seed\n"), "r.yaml: expected a mapping of config keys, got list"),
    T("recipe-null-backbone", recipe("backbone:\n"), "r.yaml:1: backbone=None: expected str"),
    # the DeepSpeed JSON
    T("ds-missing", ["--ds_config", "/nonexistent.json"], "--ds_config /nonexistent.json: no such file"),
    T("ds-malformed", lambda t, e: ["--ds_config", str(write(t / "ds.json", '{"zero_optimization": {\n'))],
      "ds.json:2: malformed JSON"),
    T("ds-not-utf8", lambda t, e: ["--ds_config", str(write(t / "ds.json", b'{"a": "\xfe"}'))],
      "ds.json:1: not valid UTF-8"),
    T("ds-a-list", lambda t, e: ["--ds_config", ds(t, [1])], "ds.json: expected a JSON object at top level"),
    T("ds-zero-string", lambda t, e: ["--ds_config", ds(t, {"zero_optimization": "3"})],
      "ds.json: zero_optimization must be an object, got str '3'"),
    T("ds-offload-string", lambda t, e: ["--ds_config", ds(t, {"zero_optimization": {"stage": 3,
                                                                                      "offload_optimizer": "cpu"}})],
      "zero_optimization.offload_optimizer must be an object"),
    T("ds-bf16-bool", lambda t, e: ["--ds_config", ds(t, {"bf16": True})], "ds.json: bf16 must be an object"),
    T("ds-stage-5", lambda t, e: ["--ds_config", ds(t, {"zero_optimization": {"stage": 5}})],
      "zero_optimization.stage=5, expected 0, 1, 2 or 3"),
    T("ds-load-universal", lambda t, e: ["--ds_config", ds(t, {"checkpoint": {"load_universal": True}})],
      "checkpoint.load_universal is refused: DeepSpeed's universal-checkpoint loader unpickles"),
    T("ds-nebula", lambda t, e: ["--ds_config", ds(t, {"nebula": {"enabled": True}})],
      "nebula.enabled is refused"),
    T("ds-decoupled-writer", lambda t, e: ["--ds_config", ds(t, {"checkpoint": {"writer": {"decoupled": True}}})],
      "checkpoint.writer is refused"),
    T("ds-micro-batch-string", lambda t, e: ["--ds_config", ds(t, {"train_micro_batch_size_per_gpu": "x"})],
      "train_micro_batch_size_per_gpu='x', expected a non-negative number"),
    T("ds-bucket-negative", lambda t, e: ["--ds_config", ds(t, {"zero_optimization": {"stage": 3,
                                                                                      "reduce_bucket_size": -5}})],
      "zero_optimization.reduce_bucket_size=-5, expected a non-negative number"),
    T("ds-bf16-enabled-string", lambda t, e: ["--ds_config", ds(t, {"bf16": {"enabled": "yes"}})],
      "bf16.enabled='yes', expected true, false or \"auto\""),
    # the device, the backbone and the prompt against it
    T("fp16-on-cpu", ["--precision", "fp16"], "precision fp16 (--precision): the CPU accelerator has no fp16"),
    T("layer-out-of-range", ["--prompt_layers", "0,9"], "prompt_layers='0,9': layer 9 out of range for a 2-layer"),
    T("last-n-beyond-depth", ["--prompt_layers", "last:99"], "last:99 asks for 99 layers but the backbone has 2"),
    T("positions", ["--max_seq_len", "600"], "max_seq_len 600 = 600 exceeds tiny-bert's 512 positions"),
    T("lester-positions", ["--method", "lester", "--prompt_len", "20", "--max_seq_len", "500"],
      "500 + prompt_len 20 (lester prompts take positions) = 520 exceeds"),
    T("backbone-missing", ["--backbone", "/nonexistent/model"], "--backbone '/nonexistent/model': no such directory"),
    T("backbone-offline-hub", ["--backbone", "someone/not-cached-model"], "Hugging Face hub name (offline?)"),
    T("backbone-unsupported", lambda t, e: ["--backbone", str(write(t / "gpt2" / "config.json",
                                                                    '{"model_type": "gpt2"}').parent)],
      "backbone model_type 'gpt2' is not supported; supported: bert"),
    T("task-unknown", ["--task", "conll2033"], "unknown task 'conll2033'"),
    T("data-dir-missing", ["--task", "rte", "--data_dir", "/nonexistent"], "data_dir /nonexistent does not exist"),
    T("data-split-missing", lambda t, e: ["--task", "rte", "--data_dir", str((t / "empty").mkdir() or t / "empty")],
      "task 'rte' split 'train': none of"),
    T("verbalizer-decoder", ["--head_type", "verbalizer", "--backbone", "tiny-llama"],
      "--head_type verbalizer needs an encoder with an MLM head"),
    T("verbalizer-tag-task", ["--head_type", "verbalizer", "--task", "conll03"],
      "needs a classification task; conll03"),
    T("verbalizer-word-count", ["--head_type", "verbalizer", "--label_words", "good"],
      "label_words has 1 word(s) but the task has 2 labels"),
    # the output directory
    T("output-is-a-file", lambda t, e: ["--output_dir", str(write(t / "file", "x"))], "exists and is not a directory",
      ),
    T("output-unwritable", ["--output_dir", "/proc/1/megaprompt-run"], "--output_dir /proc/1/megaprompt-run: not "
      "writable"),
    T("another-run", ["--lr", "0.5"], "holds outputs of another run (lr: 0.01 there, 0.5 now)"),
    Case("export-only-run", "train", lambda t, e: train_argv(
        write(t / "x" / "export" / "export.json", "{}").parents[1], "--lr", "0.5"),
        "holds export of an unknown run (no config.yaml)"),
    Case("locked", "train", lambda t, e: [*train_argv(t / "locked"), "--lr", "0.01"], "is in use by another run (host",
         tags=["locked"]),
    T("resume-not-a-checkpoint", lambda t, e: ["--resume", str(t)], "not a complete megaprompt checkpoint"),
    Case("resume-world-size", "train", lambda t, e: train_argv(checkpoint_with(
        t / "w", e, state={"world": 2})), "was written by 2 ranks, this job has 1"),
    Case("resume-zero-stage", "train", lambda t, e: train_argv(checkpoint_with(
        t / "z", e, state={"zero_stage": 2})), "was written with ZeRO stage 2"),
    Case("resume-bad-head", "train", lambda t, e: train_argv(checkpoint_with(t / "h", e, head="[1")),
         "HEAD.json: not valid JSON"),
    Case("resume-bad-state", "train", lambda t, e: train_argv(checkpoint_with(t / "s", e, state="{nope"),
                                                              "--resume", str(t / "s" / "checkpoints" / "step_2")),
         "step_2/state.json: not valid JSON"),
    # data content, found after the cheap checks (own output directory)
    T_fresh("data-malformed-jsonl", lambda t, e: ["--task", "rte", "--data_dir", rte_dir(t, '{"premise": \n')],
            "train.jsonl:1: malformed JSON line"),
    T_fresh("data-label-not-in-set", lambda t, e: ["--task", "rte", "--data_dir", rte_dir(
        t, json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0}) + "\n")],
        "train.jsonl:1: label 'maybe' is not in the task's label set"),
    T_fresh("data-invalid-utf8", lambda t, e: ["--task", "rte", "--data_dir", rte_dir(
        t, b'{"premise": "ok", "hypothesis": "h", "label": "entailment"}\n{"premise": "caf\xe9"}\n')],
        "train.jsonl:2: not UTF-8 text"),
    T_fresh("data-null-field", lambda t, e: ["--task", "rte", "--data_dir", rte_dir(
        t, json.dumps({"premise": None, "hypothesis": "h", "label": "entailment"}) + "\n")],
        "train.jsonl:1: field(s) ['premise'] are null or NaN"),
    T_fresh("data-wrong-type", lambda t, e: ["--task", "wic", "--data_dir", rte_dir(t, json.dumps(
        {"word": "w", "sentence1": "a w", "sentence2": "w b", "start1": "x", "end1": 3, "start2": 0, "end2": 1,
         "label": True}) + "\n")], "train.jsonl:1: malformed record (ValueError"),
    T_fresh("batch-cannot-fill", lambda t, e: ["--batch_size", "4096"], "cannot fill one global batch of 4096"),
    # predict
    Case("predict-no-export", "predict", lambda t, e: ["--export", str(t / "nope")], "export.json: missing"),
    Case("predict-bad-meta", "predict", lambda t, e: ["--export", str(write(copy_export(e, t) / "export.json",
                                                                           "{oops").parent)], "not valid JSON"),
    Case("predict-garbage-tensors", "predict", lambda t, e: ["--export", str(write(
        copy_export(e, t) / "prompts" / "shared.safetensors", b"\x80\x04garbage").parents[1])],
         "not a safetensors file"),
    Case("predict-nan-export", "predict", lambda t, e: ["--export", nan_export(e, t)],
         "tensor 'out.bias' holds NaN or Inf values"),
    Case("predict-positions", "predict", lambda t, e: ["--export", str(e / "export"), "--split", "dev",
                                                       "--max_seq_len", "600", "--output_dir", str(t / "p")],
         "max_seq_len 600 = 600 exceeds tiny-bert's 512 positions"),
    Case("predict-other-labels", "predict", lambda t, e: ["--export", str(e / "export"), "--task", "cb",
                                                          "--output_dir", str(t / "p")],
         "--task cb has labels ['entailment', 'contradiction', 'neutral'] but the export was trained with"),
    Case("predict-other-head", "predict", lambda t, e: ["--export", str(e / "export"), "--task", "squad",
                                                        "--output_dir", str(t / "p")],
         "--task squad needs a 'span' head but the export has 'cls' (trained on 'demo')"),
    Case("predict-unknown-split", "predict", lambda t, e: ["--export", str(e / "export"), "--split", "valdation",
                                                           "--output_dir", str(t / "p")],
         "has no split 'valdation'"),
    Case("predict-batch-zero", "predict", lambda t, e: ["--export", str(e / "export"), "--batch_size", "0"],
         "--batch_size 0: expected >= 1"),
    Case("predict-output-is-file", "predict", lambda t, e: ["--export", str(e / "export"), "--split", "dev",
                                                            "--output_dir", str(write(t / "f", "x"))],
         "exists and is not a directory"),
    Case("predict-no-overwrite", "predict", lambda t, e: ["--export", str(e / "export"), "--split", "dev",
                                                          "--output_dir", str(write(t / "p" / "demo_dev_metrics.json",
                                                                                    "{}").parent)],
         "demo_dev_metrics.json exists (predictions of an earlier call): pass --overwrite"),
    # launch (Slurm): grids, reserved flags, resources
    Case("sweep-file-missing", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep_file", "/none.yaml",
                                                       "--dry-run"], "--sweep_file /none.yaml: no such file"),
    Case("sweep-file-bad-yaml", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep_file",
                                                        str(write(t / "g.yaml", "lr: [1,\n")), "--dry-run"],
         "g.yaml:2: invalid YAML"),
    Case("sweep-file-a-list", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep_file",
                                                      str(write(t / "g.yaml", "- 1\n")), "--dry-run"],
         "g.yaml: expected a non-empty mapping"),
    Case("sweep-file-bad-key", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep_file",
                                                       str(write(t / "g.yaml", "lr: [1]\nbad-key: [2]\n")),
                                                       "--dry-run"], "g.yaml:2: invalid sweep key 'bad-key'"),
    Case("sweep-file-null", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep_file",
                                                    str(write(t / "g.yaml", "lr: [1, null]\n")), "--dry-run"],
         "g.yaml:1: sweep values may not be null"),
    Case("sweep-file-not-utf8", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep_file",
                                                        str(write(t / "g.yaml", b"lr: [\xff]\n")), "--dry-run"],
         "g.yaml:1: not valid UTF-8"),
    Case("sweep-item", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--sweep", "lr", "--dry-run"],
         "bad --sweep item 'lr': expected key=v1,v2"),
    Case("launch-reserved", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--dry-run", "--",
                                                    "--output_dir", "x"], "--output_dir is set by the launcher"),
    Case("launch-nodes-zero", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--nodes", "0", "--dry-run"],
         "nodes must be >= 1"),
    Case("launch-typo", "launch", lambda t, e: ["--output_dir", str(t / "s"), "--partiton", "gpu", "--dry-run"],
         "unrecognized launcher arguments: --partiton"),
    Case("launch-bad-manifest", "launch", lambda t, e: ["--output_dir", str(write(t / "s" / "manifest.json",
                                                                                  "{broken").parent),
                                                        "--sweep", "lr=1,2", "--dry-run"],
         "manifest.json: not a valid manifest (JSONDecodeError)"),
    # the tools
    Case("summary-bad-manifest", "sweep_summary", lambda t, e: [str(write(t / "s" / "manifest.json", "[").parent)],
         "manifest.json: not a valid manifest"),
    Case("summary-manifest-shape", "sweep_summary", lambda t, e: [str(write(t / "s" / "manifest.json",
                                                                            '{"elements": [{"x": 1}]}').parent)],
         "manifest.json: element without index/dir/params"),
    Case("summary-not-a-dir", "sweep_summary", lambda t, e: [str(t / "nowhere")], "is not a directory"),
    Case("memory-methods", "memory", lambda t, e: ["--methods", "lora"], "--methods 'lora': expected a comma list"),
    Case("memory-backbone", "memory", lambda t, e: ["--backbone", "/nonexistent/config.json"], "/nonexistent"),
    Case("param-ratio-labels", "param_ratio", lambda t, e: ["--num_labels", "0"], "--num_labels 0: expected >= 1"),
    Case("param-ratio-backbone", "param_ratio", lambda t, e: ["--backbone", "no-such-preset"], "no-such-preset"),
]


def entry(name: str) -> Callable[[list[str]], int]:
    if name == "train":
        from megaprompt.train import main
    elif name == "predict":
        from megaprompt.predict import main
    elif name == "launch":
        from megaprompt.launch import main
    elif name == "memory":
        from megaprompt.costs.cli import main
    elif name == "param_ratio":
        from megaprompt.costs.params import main
    else:
        sys.path.insert(0, str(ROOT / "tools"))
        from sweep_summary import main
    return main


def run_entry(name: str, argv: list[str]) -> int:
    try:
        return entry(name)(argv)
    except SystemExit as exc:                # argparse: exit code 2 after its one line
        return int(exc.code or 0)


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line(case, earlier, tmp_path, capfd):
    before = snapshot(earlier)
    argv = case.argv(tmp_path, earlier)
    planted = snapshot(tmp_path)
    capfd.readouterr()
    holder = None
    if "locked" in case.tags:
        from megaprompt.rundir import RunDirLock
        (tmp_path / "locked").mkdir(exist_ok=True)
        holder = RunDirLock(tmp_path / "locked").acquire()      # a live holder: this very process
    try:
        rc = run_entry(case.entry, argv)
    finally:
        if holder is not None:
            holder.release()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert case.expect in lines[0], lines[0]
    if case.guards_earlier:
        assert snapshot(earlier) == before, "the earlier run's outputs changed"
    changed = {k for k, v in planted.items() if snapshot(tmp_path).get(k) != v}
    assert not changed, f"planted inputs changed: {changed}"
