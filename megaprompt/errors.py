"""The one exception family for a user's mistake or a bad input file.

Anything raised as a ``UserError`` reaches the user as one line (``error: <message>``) with exit code 2, no
traceback: the message must name the file:line, key or value at fault and what was expected. Anything else
that escapes is a bug in megaprompt, and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """A user's mistake or bad input; the message is one line."""


__all__ = ["UserError"]
