"""No code runs from any checkpoint or export: a pickle payload planted in every file that resume and predict
read, under each shipped ds_config and DeepSpeed's documented checkpoint options, never runs; each attempt
ends with one line naming the file.

The payload is live: ``test_the_payload_runs_under_a_plain_torch_load`` shows that an ordinary
``torch.load(weights_only=False)`` - what DeepSpeed itself calls - executes it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import ROOT

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")
SHIPPED = ("zero2", "zero3", "zero3_offload")
# DeepSpeed's "checkpoint" section (deepspeed/runtime/constants.py, model_checkpointing/constants.py): options
# that keep its loaders megaprompt's, on top of the ZeRO-3 config ...
ACCEPTED_OPTIONS = {"tag-validation-fail": {"tag_validation": "Fail"},
                    "legacy-serialization": {"checkpoint_serialization": False},
                    "node-local-storage": {"use_node_local_storage": True}}
# ... and options whose loaders go around it, refused before anything is read.
REFUSED_OPTIONS = {"load-universal": {"checkpoint": {"load_universal": True}},
                   "writer-fast": {"checkpoint": {"writer": {"type": "fast"}}},
                   "writer-decoupled": {"checkpoint": {"writer": {"decoupled": True}}},
                   "nebula": {"nebula": {"enabled": True}},
                   "datastates": {"datastates": {"enabled": True}}}


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a torch-saved pickle whose loading creates ``marker``."""
    torch.save({"state": Payload(marker), "tensor": torch.zeros(2)}, path)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("MEGAPROMPT_CACHE", str(tmp_path / "cache"))


def argv(out: Path, ds: Path, *extra: str) -> list[str]:
    return ["--backbone", "tiny-bert", "--output_dir", str(out), "--ds_config", str(ds), "--max_steps", "2",
            "--batch_size", "4", "--max_train_examples", "16", "--max_eval_examples", "8", "--prompt_len", "2",
            *extra]


def ds_file(tmp: Path, base: str, extra: dict) -> Path:
    cfg = json.loads((ROOT / "ds_configs" / f"{base}.json").read_text())
    for key, value in extra.items():
        cfg[key] = value
    path = tmp / f"{base}-{abs(hash(json.dumps(extra, sort_keys=True)))}.json"
    path.write_text(json.dumps(cfg))
    return path


def one_error_line(capfd) -> str:
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def resume_files(run: Path) -> list[Path]:
    step = sorted((run / "checkpoints").glob("step_*"))[-1]
    return sorted(step.glob("*.pt")) + sorted(step.glob("*.safetensors")) + [step / "state.json"]


def test_the_payload_runs_under_a_plain_torch_load(tmp_path):
    marker = tmp_path / "ran"
    plant(tmp_path / "f.pt", marker)
    code = f"import torch; torch.load({str(tmp_path / 'f.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert marker.exists()


CONFIGS = [(name, name, {}) for name in SHIPPED] + [(k, "zero3", {"checkpoint": v})
                                                    for k, v in ACCEPTED_OPTIONS.items()]


@pytest.mark.parametrize("name,base,extra", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_no_payload_runs_on_resume(name, base, extra, tmp_path, capfd):
    from megaprompt.train import main
    ds = ds_file(tmp_path, base, extra)
    clean = tmp_path / "clean"
    assert main(argv(clean, ds)) == 0
    files = resume_files(clean)
    if base != name:                     # the option variants change how .pt files are written and read
        files = [f for f in files if f.suffix == ".pt"]
    assert files and any(f.suffix == ".pt" for f in files)
    for target in files:
        run = tmp_path / f"run-{target.name}"
        shutil.copytree(clean, run)
        marker = tmp_path / f"ran-{target.name}"
        plant(run / target.relative_to(clean), marker)
        capfd.readouterr()
        assert main(argv(run, ds)) == 2          # the same run: --resume auto loads step_2
        line = one_error_line(capfd)
        assert not marker.exists(), f"the payload in {target.name} ran"
        assert target.name in line, line


@pytest.mark.parametrize("name", sorted(REFUSED_OPTIONS))
def test_options_that_bypass_the_safe_loader_are_refused_before_reading(name, tmp_path, capfd):
    from megaprompt.train import main
    clean = tmp_path / "clean"
    assert main(argv(clean, ROOT / "ds_configs" / "zero3.json")) == 0
    marker = tmp_path / "ran"
    for f in resume_files(clean):
        if f.suffix == ".pt":
            plant(f, marker)
    capfd.readouterr()
    assert main(argv(clean, ds_file(tmp_path, "zero3", REFUSED_OPTIONS[name]))) == 2
    line = one_error_line(capfd)
    assert "is refused" in line and not marker.exists(), line


@pytest.mark.parametrize("target", ["prompts/shared.safetensors", "export.json", "heads/demo.safetensors"])
def test_no_payload_runs_in_predict(target, tmp_path, capfd):
    from megaprompt.predict import main as predict
    from megaprompt.train import main
    run = tmp_path / "run"
    assert main(argv(run, ROOT / "ds_configs" / "zero3.json")) == 0
    marker = tmp_path / "ran"
    plant(run / "export" / target, marker)
    capfd.readouterr()
    assert predict(["--export", str(run / "export"), "--split", "dev", "--output_dir", str(tmp_path / "p")]) == 2
    line = one_error_line(capfd)
    assert not marker.exists() and target in line, line
