"""The on-disk feature cache: one folder per (data, task, tokenizer, max_seq_len, limit, transform, code version).

A split's cache folder ``<root>/<task>-<split>-<max_seq_len>-<key>/`` holds ``features/`` and ``examples/``
(``datasets.Dataset.save_to_disk``: Arrow files, memory-mapped by ``load_from_disk``, no pickle) and
``meta.json``. ``<root>`` is ``$MEGAPROMPT_CACHE`` or ``~/.cache/megaprompt``; ``MEGAPROMPT_CACHE=off``
disables the cache.

The key hashes the *bytes* of every file the split is read from (a size + mtime shortcut would miss an edit
that keeps both, e.g. a copy with ``cp -p``), the task's name, label set and options, the tokenizer (class,
name, serialised vocabulary and normaliser without its per-call truncation state), ``max_seq_len``, the
example limit, the transform's name and ``CODE_VERSION`` (bump it whenever an ``encode`` changes what it
writes). A folder is written under a temporary name and renamed into place, so a reader sees a complete cache
or none; a concurrent writer of the same key loses the rename race harmlessly. Files follow the user's umask
(``megaprompt.files``), so colleagues sharing a cache on a cluster can read it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from megaprompt.files import _follow_umask_tree, atomic_write_text, make_temp_dir

logger = logging.getLogger(__name__)

CODE_VERSION = "2"          # v1 was the .npz cache; v2 the Arrow folders
OFF = ("", "0", "off", "none", "false")


def cache_root(directory: str | os.PathLike | None = "auto") -> Path | None:
    """The cache root: ``directory``, or (``"auto"``) ``$MEGAPROMPT_CACHE`` / ``~/.cache/megaprompt``; None = off."""
    if directory != "auto":
        return Path(directory) if directory is not None else None
    env = os.environ.get("MEGAPROMPT_CACHE")
    if env is not None and env.strip().lower() in OFF:
        return None
    return Path(env) if env else Path.home() / ".cache" / "megaprompt"


def file_fingerprint(paths: Sequence[Path]) -> str:
    """Hash of the names, sizes and full contents of ``paths`` (read in 4 MiB chunks)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(f"{Path(p).name}\0{Path(p).stat().st_size}\0".encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:   # truncation / padding state changes with every call: leave it out
        state = json.loads(backend.to_str())
        state.pop("truncation", None), state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(list(getattr(tokenizer, "model_input_names", []))).encode())
    h.update(json.dumps([tokenizer.pad_token_id, getattr(tokenizer, "mask_token_id", None),
                         getattr(tokenizer, "padding_side", "right")]).encode())
    return h.hexdigest()[:16]


def cache_key(task: Any, split: str, files: Sequence[Path], tokenizer: Any, max_seq_len: int,
              limit: int | None = None, transform: str = "") -> str:
    options = getattr(task, "cache_options", lambda: {})()
    h = hashlib.sha256()
    h.update(json.dumps([CODE_VERSION, task.name, split, max_seq_len, limit or 0, transform, options,
                         list(task.label_names), getattr(task, "hf_dataset", None) if not files else None],
                        sort_keys=True, default=str).encode())
    h.update(file_fingerprint(files).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return f"{task.name}-{split}-{max_seq_len}-{h.hexdigest()[:20]}"


def load(folder: Path) -> tuple[Any, Any, dict[str, Any]] | None:
    """(features, examples, meta) of a complete cache folder, memory-mapped; None when absent or unreadable."""
    if not (folder / "meta.json").is_file():
        return None
    import datasets
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        features = datasets.load_from_disk(str(folder / "features"))
        examples = datasets.load_from_disk(str(folder / "examples"))
    except (OSError, ValueError, KeyError, FileNotFoundError) as err:
        logger.warning("ignoring unreadable feature cache %s (%s)", folder, err)
        return None
    return features, examples, meta


def save(folder: Path, features: Any, examples: Any, meta: dict[str, Any]) -> bool:
    """Write a cache folder atomically (temporary sibling + rename); False (logged) if it could not be written."""
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(folder.parent, f".{folder.name}.tmp-{os.getpid()}-")
        with quiet_bars():
            features.save_to_disk(str(tmp / "features"))
            examples.save_to_disk(str(tmp / "examples"))
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1, default=str))   # written last: complete
        _follow_umask_tree(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "meta.json").is_file():   # not "another writer got there first"
                raise
        return True
    except OSError as err:
        logger.warning("could not write feature cache %s (%s)", folder, err)
        return False
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def quiet_bars() -> Iterator[None]:
    """No "Saving the dataset" bars: the tokenizing bar is the one that says how far rank 0 is."""
    import datasets
    was = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def memo_json(name: str, files: Sequence[Path], compute: Callable[[], Any], directory: str | None = "auto") -> Any:
    """A small JSON value derived from ``files`` (e.g. a label set read from the training file), cached by their
    content hash so a rerun does not parse them again."""
    root = cache_root(directory)
    if root is None:
        return compute()
    path = root / "memo" / f"{name}-{CODE_VERSION}-{file_fingerprint(files)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(value))
    except OSError as err:
        logger.warning("could not write %s (%s)", path, err)
    return value
