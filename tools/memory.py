#!/usr/bin/env python
"""Training-memory estimate, FT vs P-Tuning v2 under ZeRO (thin wrapper of ``megaprompt.costs.cli``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaprompt.costs.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
