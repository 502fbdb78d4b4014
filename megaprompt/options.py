"""Field metadata shared by the config dataclasses, and the generic checks and help text derived from it.

A field is declared once, with its default, its ``--help`` group, its allowed values or numeric bounds, and
whether it changes what a run computes (``identity``). Everything else is derived from that declaration:
validation (``check_fields``: finite numbers, bounds, choices), the grouped ``--help`` (``help_text``: the
field's docstring, default and allowed values), and the output-directory identity check
(``megaprompt.rundir``), so no list of "fields that matter" is kept by hand.

Docstrings of dataclass fields are not kept by Python at runtime; ``field_docs`` reads them from the class
source with ``ast`` (a string literal right after an annotated assignment, the convention of litgpt/PEP 257's
"attribute docstrings").
"""
from __future__ import annotations

import ast
import functools
import inspect
import math
import textwrap
from dataclasses import Field, field, fields
from typing import Any

from megaprompt.errors import UserError

GROUPS = ("model and prompt", "data", "training", "multi-task", "DeepSpeed", "outputs")


class FieldError(UserError):
    """A field holds a value outside what it allows; ``name`` says which, so callers can name its source."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def opt(default: Any, group: str, *, choices: tuple[Any, ...] = (), identity: bool = True, ge: float | None = None,
        gt: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with megaprompt's metadata (see the module docstring)."""
    assert group in GROUPS, group
    return field(default=default, metadata={"group": group, "choices": tuple(choices), "identity": identity,
                                            "ge": ge, "gt": gt, "lt": lt})


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bounds_text(f: Field) -> str:
    """Allowed values of a field in words: ``one of a, b`` or ``>= 0 and < 1`` ('' when unconstrained)."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(str(c) for c in m["choices"])
    parts = [f"{op} {_num(m[k])}" for k, op in (("ge", ">="), ("gt", ">"), ("lt", "<")) if m.get(k) is not None]
    return " and ".join(parts)


def check_fields(obj: Any) -> None:
    """Generic validation of a config dataclass: every float finite, bounds and choices as declared."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            allowed = bounds_text(f)
            raise FieldError(f.name, f"{f.name}={value}: expected a finite number{' ' + allowed if allowed else ''}")
        m = f.metadata
        if m.get("choices") and value not in m["choices"]:
            raise FieldError(f.name, f"{f.name}={value!r}: expected {bounds_text(f)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bad = ((m.get("ge") is not None and value < m["ge"]) or (m.get("gt") is not None and value <= m["gt"])
                   or (m.get("lt") is not None and value >= m["lt"]))
            if bad:
                raise FieldError(f.name, f"{f.name}={value}: expected {bounds_text(f)}")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring} read from the class source (empty where the source is unavailable)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def help_text(cls: type, f: Field) -> str:
    """``--help`` text of one field: docstring, default, allowed values."""
    doc = field_docs(cls).get(f.name, "")
    default = f.default
    shown = "none" if default is None else ("''" if default == "" else default)
    extra = [f"default: {shown}"]
    allowed = bounds_text(f)
    if allowed:
        extra.append(allowed)
    return f"{doc} ({'; '.join(extra)})" if doc else f"({'; '.join(extra)})"


__all__ = ["FieldError", "GROUPS", "bounds_text", "check_fields", "field_docs", "help_text", "opt"]
