"""File primitives: atomic text writes that leave nothing behind on failure, the user's umask, and one-line
UTF-8 errors naming file:line."""
from __future__ import annotations

import os
import stat

import pytest

from megaprompt.files import atomic_write_text, check_writable, read_text


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_read_text_names_the_line_of_a_bad_byte(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"a: 1\nb: 2\nc: \xff\n")
    with pytest.raises(ValueError, match=r"r.yaml:3: not valid UTF-8 \(byte 0xff\)"):
        read_text(p)


def test_check_writable_creates_and_refuses(tmp_path):
    check_writable(tmp_path / "new" / "dir", "--output_dir")
    assert (tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new" / "dir").iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="--output_dir .*/f: exists and is not a directory"):
        check_writable(tmp_path / "f", "--output_dir")
