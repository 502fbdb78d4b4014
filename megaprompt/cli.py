"""What every megaprompt command line shares: one-line errors with exit code 2, never a usage block or a
traceback for a user's mistake (the README's promise, checked by tests/test_bad_inputs.py)."""
from __future__ import annotations

import argparse
import sys


def one_line(message: object) -> str:
    """A message folded onto one line (multi-line library errors keep only their words)."""
    return " ".join(str(message).split())


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line, ``<prog>: error: <message>``, with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def fail(message: object) -> int:
    """Report a user's mistake on stderr as one line and return the exit code for it."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


__all__ = ["ArgumentParser", "fail", "one_line"]
