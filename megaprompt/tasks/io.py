"""File readers shared by all task families, with one-line ``file:line`` errors on malformed input.

Formats follow the official distributions: SuperGLUE jsonl, GLUE TSV (``csv.QUOTE_NONE`` like the GLUE
baseline's ``_read_tsv``), CoNLL-style whitespace-separated column files with blank lines between sentences.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from megaprompt.errors import UserError
from megaprompt.files import read_text

logger = logging.getLogger(__name__)

csv.field_size_limit(1 << 30)


class DataError(UserError):
    """Malformed or unexpected input data; the message names the file (and line) at fault."""


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def open_text(path: Path) -> io.StringIO:
    """The file as text lines (split at \\n only, like iterating the file): UTF-8, a leading BOM dropped (Excel
    and Notepad write one); bytes that are not UTF-8 give one line naming ``file:line``."""
    try:
        text = read_text(path)
    except ValueError as err:
        raise DataError(str(err)) from None
    return io.StringIO(text.removeprefix("\ufeff"), newline="")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (write null or a number)")


def _json_loads(text: str) -> Any:
    """Strict JSON: Python's json accepts NaN/Infinity, which no other JSON reader does and no label can hold."""
    return json.loads(text, parse_constant=_no_constants)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line."""
    path = Path(path)
    _check_nonempty(path)
    rows: list[dict[str, Any]] = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = _json_loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: {e}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: file has no records")
    return rows


def read_json(path: str | Path) -> Any:
    """A whole JSON document."""
    path = Path(path)
    _check_nonempty(path)
    text = open_text(path).getvalue()
    try:
        return _json_loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: {e if isinstance(e, ValueError) else 'JSON nested too deeply'}") from None


def read_table(path: str | Path, delimiter: str | None = None, header: bool = True,
               quoting: int | None = None, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A TSV/CSV file as dicts (``_line`` = 1-based line number). Every row must have the header's width.

    ``delimiter`` defaults to tab for ``.tsv`` and comma otherwise; TSV uses ``QUOTE_NONE`` (GLUE style).
    Without a header, keys are column indices as strings ("0", "1", ...).
    """
    path = Path(path)
    _check_nonempty(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    if quoting is None:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows: list[dict[str, Any]] = []
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        names: list[str] | None = None
        for record in reader:
            lineno = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if names is None:
                if header:
                    names = [c.strip() for c in record]
                    missing = [c for c in required if c not in names]
                    if missing:
                        raise DataError(f"{path}:{lineno}: missing column(s) {missing}; header has {names}")
                    continue
                names = [str(i) for i in range(len(record))]
            if len(record) != len(names):
                raise DataError(f"{path}:{lineno}: expected {len(names)} fields, found {len(record)}")
            row: dict[str, Any] = dict(zip(names, record))
            row["_line"] = lineno
            rows.append(row)
    if names is None:
        raise DataError(f"{path}: file is empty")
    return rows


def read_columns(path: str | Path, min_cols: int = 2, sep: str | None = None,
                 comment_prefixes: tuple[str, ...] = (),
                 skip_docstart: bool = True, same_width: str = "file") -> Iterator[tuple[int, list[list[str]]]]:
    """CoNLL-style column file: yields (first line number, rows of columns) per blank-line-separated sentence.

    ``-DOCSTART-`` lines (CoNLL-2003 document separators) are skipped; lines starting with a comment
    prefix are ignored. Every row must have the same number (>= ``min_cols``) of columns within a file
    (``same_width="file"``) or within each sentence (``"sentence"``, e.g. CoNLL-2012 predicate columns).
    """
    path = Path(path)
    _check_nonempty(path)
    width: int | None = None
    sentence: list[list[str]] = []
    start = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            stripped = line.strip()
            if not stripped:
                if sentence:
                    yield start, sentence
                    sentence = []
                    if same_width == "sentence":
                        width = None
                continue
            if comment_prefixes and stripped.startswith(comment_prefixes) and not sentence:
                continue
            cols = stripped.split(sep)
            if skip_docstart and cols[0] == "-DOCSTART-":
                continue
            if len(cols) < min_cols:
                raise DataError(f"{path}:{lineno}: expected at least {min_cols} columns, found {len(cols)}")
            if width is None:
                width = len(cols)
            elif len(cols) != width:
                raise DataError(f"{path}:{lineno}: expected {width} columns like the lines before, found {len(cols)}")
            if not sentence:
                start = lineno
            sentence.append(cols)
    if sentence:
        yield start, sentence
    elif start == 0:
        raise DataError(f"{path}: file has no token lines")


def find_file(data_dir: str | Path, names: str, what: str) -> Path:
    """The first existing file among ``|``-separated candidate names (globs allowed) in ``data_dir``."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data_dir {d} does not exist or is not a directory")
    for name in names.split("|"):
        if any(ch in name for ch in "*?["):
            hits = sorted(d.glob(name))
            if hits:
                return hits[0]
        elif (d / name).is_file():
            return d / name
    raise DataError(f"{what}: none of {names.split('|')} found in {d}")
