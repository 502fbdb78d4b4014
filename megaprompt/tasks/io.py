"""File readers shared by all task families, with one-line ``file:line`` errors on malformed input.

Formats follow the official distributions: SuperGLUE jsonl, GLUE TSV (``csv.QUOTE_NONE`` like the GLUE
baseline's ``_read_tsv``), CoNLL-style whitespace-separated column files with blank lines between sentences.
Every reader takes UTF-8 with or without a byte-order mark, and names the first line that is not UTF-8; lines
end at a line feed. ``tests/tasks/test_fuzz.py`` feeds them arbitrary bytes and JSON.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from megaprompt.errors import UserError

logger = logging.getLogger(__name__)

csv.field_size_limit(1 << 30)


class DataError(UserError):
    """Malformed or unexpected input data; the message names the file (and line) at fault."""


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its newline) of a UTF-8 file; a BOM is dropped, bad bytes name the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at "
                                f"column {e.start + 1})") from None
            yield lineno, line


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line."""
    path = Path(path)
    _check_nonempty(path)
    rows: list[dict[str, Any]] = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
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
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None


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
    reader = csv.reader((line for _, line in text_lines(path)), delimiter=delimiter, quoting=quoting)
    names: list[str] | None = None
    for record in _records(reader, path):
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


def _records(reader: Any, path: Path) -> Iterator[list[str]]:
    """``csv.reader`` rows; its own errors (a NUL byte, an unclosed quote) name the line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV/TSV line ({e})") from None


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
    for lineno, line in text_lines(path):
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
