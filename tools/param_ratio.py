#!/usr/bin/env python
"""Exact frozen/trainable parameter counts and ratios (thin wrapper of ``megaprompt.costs.params``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaprompt.costs.params import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
