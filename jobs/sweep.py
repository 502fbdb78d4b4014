"""Sweep grids: expansion into job-array elements, element directory names, ``--array`` specs, manifest.

A sweep is a Cartesian grid ``{key: [values...]}`` (from ``--sweep key=v1,v2 ...`` and/or a YAML grid
file). Element ``i`` of the grid is array index ``i`` (``itertools.product`` order: the last key varies
fastest). Each element trains into ``<sweep_dir>/<name>`` where ``name`` is ``k1=v1,k2=v2,...``
made filesystem-safe. An element is *finished* when ``<dir>/metrics.json`` exists; resubmitting a sweep
lists only the unfinished indices in ``--array`` (Slurm's ``--array=1,3,5-7%K`` syntax, see
https://slurm.schedmd.com/job_array.html).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


from megaprompt.files import read_yaml

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=,-]")
MAX_NAME_LEN = 200
# Flags the launcher sets itself for every element; a sweep or train argument may not override them.
RESERVED_KEYS = frozenset({"output_dir", "resume", "max_requeues"})
MANIFEST = "manifest.json"
METRICS = "metrics.json"


@dataclass
class Element:
    """One grid point: its array index, parameters (as strings, in grid key order) and directory name."""

    index: int
    params: dict[str, str]
    name: str
    output_dir: str
    finished: bool = False

    def train_args(self) -> list[str]:
        """``--key value`` pairs handed to the training entry point."""
        out: list[str] = []
        for k, v in self.params.items():
            out += [f"--{k}", v]
        return out


@dataclass
class Sweep:
    """An expanded grid rooted at ``sweep_dir``."""

    sweep_dir: str
    grid: dict[str, list[str]]
    elements: list[Element] = field(default_factory=list)

    @property
    def pending(self) -> list[Element]:
        return [e for e in self.elements if not e.finished]


def _value_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        raise ValueError("sweep values may not be null")
    if isinstance(v, (dict, list, tuple)):
        raise ValueError(f"sweep values must be scalars, got {v!r}")
    return str(v)


def _check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise ValueError(f"invalid sweep key {key!r}: expected a flag name like lr or prompt_len")
    if key in RESERVED_KEYS:
        raise ValueError(f"sweep key {key!r} is set by the launcher and cannot be swept")
    return key


def parse_sweep_args(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lr=5e-3,1e-2", "seed=1,2"]`` -> ``{"lr": ["5e-3", "1e-2"], "seed": ["1", "2"]}``.

    Values are split on commas and kept verbatim (no float normalisation), so ``5e-3`` stays ``5e-3``.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, rest = item.partition("=")
        if not sep or not rest:
            raise ValueError(f"bad --sweep item {item!r}: expected key=v1,v2,...")
        key = _check_key(key.strip().lstrip("-"))
        if key in grid:
            raise ValueError(f"sweep key {key!r} given twice")
        values = rest.split(",")
        if any(v == "" for v in values):
            raise ValueError(f"empty value in --sweep item {item!r}")
        grid[key] = values
    return grid


def load_grid_file(path: str | Path) -> dict[str, list[str]]:
    """Read a YAML grid: a mapping ``key: [values]`` (a scalar is a one-value list), optionally nested
    under a top-level ``grid:`` key. Key order is kept (it is the directory-name and index order).
    Every error names ``file:line``."""
    doc, lines = read_yaml(path, "--sweep_file", unwrap="grid")
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path}: expected a non-empty mapping of key -> list of values")
    grid: dict[str, list[str]] = {}
    for key, values in doc.items():
        where = f"{path}:{lines.get(str(key), '?')}"
        try:
            key = _check_key(str(key))
            vals = values if isinstance(values, list) else [values]
            if not vals:
                raise ValueError(f"key {key!r} has no values")
            grid[key] = [_value_str(v) for v in vals]
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return grid


def merge_grids(*grids: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Later grids override earlier ones key by key (a CLI ``--sweep`` beats the YAML file)."""
    out: dict[str, list[str]] = {}
    for g in grids:
        for k, v in g.items():
            out[k] = list(v)
    return out


def element_name(params: Mapping[str, str]) -> str:
    """``{"lr": "5e-3", "seed": "1"}`` -> ``lr=5e-3,seed=1``; unsafe characters become ``_`` and an
    over-long name is cut and suffixed with a hash of the exact parameters."""
    raw = ",".join(f"{k}={v}" for k, v in params.items())
    name = UNSAFE_NAME_CHARS.sub("_", raw)
    if name.startswith((".", "-")):
        name = "_" + name
    if len(name) > MAX_NAME_LEN:
        name = name[: MAX_NAME_LEN - 9] + "-" + _digest(params)
    return name


def _digest(params: Mapping[str, str]) -> str:
    return hashlib.sha1(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:8]


def expand(grid: Mapping[str, Sequence[str]], sweep_dir: str | Path) -> Sweep:
    """All grid points in product order, each with its own directory; marks finished elements."""
    if not grid:
        raise ValueError("empty sweep grid")
    sweep_dir = str(sweep_dir)
    keys = list(grid)
    for k in keys:
        if len(set(grid[k])) != len(grid[k]):
            raise ValueError(f"sweep key {k!r} lists a value twice: {list(grid[k])}")
    combos = list(itertools.product(*(grid[k] for k in keys)))
    params_list = [dict(zip(keys, combo)) for combo in combos]
    names = [element_name(p) for p in params_list]
    # Distinct parameters that sanitise to the same name get a hash suffix (deterministic).
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    elements = []
    for i, (p, n) in enumerate(zip(params_list, names)):
        if seen[n] > 1:
            n = f"{n}-{_digest(p)}"
        out = str(Path(sweep_dir) / n)
        elements.append(Element(i, p, n, out, finished=(Path(out) / METRICS).is_file()))
    return Sweep(sweep_dir, {k: list(grid[k]) for k in keys}, elements)


def array_spec(indices: Iterable[int], throttle: int | None = None) -> str:
    """Compact Slurm ``--array`` value: ``[0,1,2,5,7,8], 2`` -> ``0-2,5,7-8%2``."""
    idx = sorted(set(indices))
    if not idx:
        raise ValueError("no array indices")
    parts: list[str] = []
    start = prev = idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    spec = ",".join(parts)
    if throttle is not None:
        if throttle < 1:
            raise ValueError("throttle must be >= 1")
        spec += f"%{throttle}"
    return spec


def manifest_dict(sweep: Sweep, array: str, train_args: Sequence[str],
                  submissions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The JSON written to ``<sweep_dir>/manifest.json``: array index -> parameters and directory.

    ``dir`` is relative to the sweep directory (what ``tools/sweep_summary.py`` uses, so a moved sweep
    still summarises); ``output_dir`` is the path the job writes to.
    """
    return {
        "version": 1,
        "sweep_dir": sweep.sweep_dir,
        "grid": sweep.grid,
        "train_args": list(train_args),
        "array": array,
        "elements": [
            {"index": e.index, "params": e.params, "dir": e.name, "output_dir": e.output_dir,
             "finished": e.finished}
            for e in sweep.elements
        ],
        "submissions": [dict(s) for s in submissions],
    }


def read_manifest(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of ``sweep_dir`` or None when there is none."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid manifest ({type(err).__name__}); move it aside to start the sweep "
                         f"afresh") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("elements", []), list):
        raise ValueError(f"{path}: not a valid manifest (expected an object with an 'elements' list)")
    return manifest


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    """Indented JSON with one line per element / submission (readable for large sweeps)."""
    lines = ["{"]
    items = list(manifest.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows = [f"    {json.dumps(v)}" for v in value]
            lines.append(f"  {json.dumps(key)}: [\n" + ",\n".join(rows) + f"\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines) + "\n}\n"


def write_manifest(sweep_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    path = Path(sweep_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps_manifest(manifest))
    tmp.replace(path)
    return path


__all__ = ["Element", "Sweep", "parse_sweep_args", "load_grid_file", "merge_grids", "element_name",
           "expand", "array_spec", "manifest_dict", "dumps_manifest", "read_manifest", "write_manifest"]
