"""The README's examples run, one after another, in README order and then in reverse, in a fresh copy of the
repository - so no example collides with another's outputs (each writes its own default run directory).

Every fenced block preceded by the line ``<!-- readme-test -->`` is run line by line (``\\`` continues a
line, ``#`` lines are comments) with bash, as a user would paste it. Blocks without the marker need a GPU, a
cluster, the hub or data the user brings, and say so in the README.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-test -->"

pytestmark = pytest.mark.engine


def readme_commands(text: str) -> list[str]:
    """The shell commands of every marked block, in README order."""
    commands: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = i + 1
        assert lines[fence].startswith("```"), f"README line {fence + 1}: {MARKER} must precede a fenced block"
        body: list[str] = []
        for raw in lines[fence + 1:]:
            if raw.startswith("```"):
                break
            body.append(raw)
        joined = re.sub(r"\\\n\s*", " ", "\n".join(body))
        commands += [c.strip() for c in joined.splitlines() if c.strip() and not c.strip().startswith("#")]
    return commands


def test_the_readme_marks_its_runnable_examples():
    commands = readme_commands((ROOT / "README.md").read_text())
    joined = "\n".join(commands)
    # the main job, the one-process smoke run, prediction and the cost tools are all exercised
    for needle in ("deepspeed --num_gpus 2 megaprompt/train.py", "--backbone tiny-bert", "megaprompt.predict",
                   "megaprompt-memory", "megaprompt-param-ratio"):
        assert needle in joined, needle


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def test_every_example_runs_after_every_other(tmp_path):
    commands = readme_commands((ROOT / "README.md").read_text())
    repo = tmp_path / "repo"
    _copy_repo(repo)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(repo), "MEGAPROMPT_CACHE": str(tmp_path / "cache")}
    for order, cmds in (("README order", commands), ("reverse order", commands[::-1])):
        for cmd in cmds:
            proc = subprocess.run(["bash", "-c", cmd], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert proc.returncode == 0, f"{order}: {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            assert "Traceback" not in proc.stderr, f"{order}: {cmd}\n{proc.stderr[-4000:]}"
