"""File-system primitives every writer in megaprompt uses: atomic writes, the user's umask, readable errors.

* ``atomic_write_text`` / ``atomic_dir_write``: readers see the old or the new content, never a prefix of it
  (write to a temporary name in the same directory, then ``rename``, which POSIX makes atomic).
* A directory swap needs two renames (old out of the way, new in). A crash between them would leave no
  directory at all, so the old one is parked under a fixed name (``.<name>.old``) and ``repair_dir`` -
  called by every writer and reader before it looks - puts it back. Readers therefore never see "no export"
  after a crash, and never see a half-written one.
* ``tempfile.mkdtemp``/``mkstemp`` create 0700/0600 entries; on a shared cluster colleagues must be able to
  read exports and caches, so everything created here gets the mode a plain ``open``/``mkdir`` would have
  under the user's umask.
* ``read_text``: UTF-8 text with a one-line error naming ``file:line`` for bytes that are not UTF-8.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)      # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, directory: bool | None = None) -> None:
    """Give ``path`` the mode ``mkdir``/``open`` would have given it (0777/0666 minus the umask)."""
    p = Path(path)
    is_dir = p.is_dir() if directory is None else directory
    os.chmod(p, (0o777 if is_dir else 0o666) & ~_umask())


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """``mkdtemp`` in ``parent`` with the umask's mode instead of 0700."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    follow_umask(tmp, directory=True)
    return tmp


def _follow_umask_tree(root: Path) -> None:
    follow_umask(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            follow_umask(Path(dirpath) / name, directory=True)
        for name in filenames:
            follow_umask(Path(dirpath) / name, directory=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file so readers see the old or the new content, never a prefix of it.

    On failure (disk full, no permission) nothing is left behind and the old content stays.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        follow_umask(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parked(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def repair_dir(target: str | os.PathLike) -> bool:
    """Finish or undo a directory swap that a crash interrupted; returns True if something was repaired.

    ``target`` missing but ``.<name>.old`` present: the crash hit between the two renames, so the old, complete
    directory is put back. Both present: the swap completed and only the clean-up was lost.
    """
    target = Path(target)
    parked = _parked(target)
    if not parked.exists():
        return False
    if target.exists():
        shutil.rmtree(parked, ignore_errors=True)
        return False
    parked.rename(target)
    return True


def atomic_dir_write(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmpdir)``, then swap the directory into ``target``: readers see old or new, never half, and
    never nothing (see ``repair_dir``). Stale temporary directories of interrupted writes are removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    repair_dir(target)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = make_temp_dir(target.parent, f".{target.name}.tmp-")
    try:
        write(tmp)
        _follow_umask_tree(tmp)
        parked = _parked(target)
        if target.exists():
            target.rename(parked)
        tmp.rename(target)
        shutil.rmtree(parked, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        repair_dir(target)
        raise
    return target


def check_writable(directory: str | os.PathLike, what: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there; one-line ``OSError`` otherwise.

    Run before any expensive work, so an unwritable output path fails in seconds, not after training.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise OSError(f"{what} {d}: exists and is not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(f"{what} {d}: not writable ({err.strerror or err})") from None


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file; bytes that are not UTF-8 give one line naming ``file:line``."""
    p = Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{p}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x})") from None


__all__ = ["atomic_dir_write", "atomic_write_text", "check_writable", "follow_umask", "make_temp_dir", "read_text",
           "repair_dir"]


def read_yaml(path: str | os.PathLike, flag: str, unwrap: str | None = None) -> tuple[Any, dict[str, int]]:
    """A YAML file (safe loader) and the 1-based line of each top-level key, for errors that name
    ``file:line``. ``unwrap``: a document that is only ``{unwrap: X}`` gives X (and X's key lines). A missing
    file or invalid YAML is a ValueError of one line (``flag`` names the option that gave the path)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    text = read_text(p)
    try:
        doc = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: invalid YAML ({' '.join(str(getattr(err, 'problem', err)).split())})") from None
    if unwrap and isinstance(doc, dict) and set(doc) == {unwrap} and isinstance(node, yaml.MappingNode):
        doc, node = doc[unwrap], node.value[0][1]
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) \
        else {}
    return doc, lines
