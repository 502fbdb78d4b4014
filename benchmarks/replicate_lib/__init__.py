"""Helpers of ``benchmarks/replicate.py``: the paper-style comparison table as resumable cells.

- ``specs``: tasks (columns, budgets), rows (methods and their search spaces), paper numbers;
- ``splits``: the derived data folders (a selection dev carved from train; SQuAD dev split by article);
- ``cells``: the cell plan (task x row x configuration x seed), selection, and running one cell;
- ``report``: ``replicate.{json,md,png}`` from the finished cells.
"""
