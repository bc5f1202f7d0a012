"""Normalized Relative Gain (NRG) of several runs, as UNIREX compares rationale extractors (Chan et al. 2022, ICML).

Each metric is min-max normalised across the compared runs, ``(x - min) / (max - min)`` when higher is better and
``(max - x) / (max - min)`` when lower is better, so the best run gets 1 and the worst 0; when every run has the
same value each gets 1.0 (no run is worse). The normalised metrics are averaged within each desideratum group
(faithfulness, plausibility, task) and the group scores, over groups with at least one metric, into the overall NRG.

Default metrics (names as the UNIREX module logs them, looked up as ``<split>/<name>``, then bare ``<name>``):
faithfulness ``comp_aopc`` (max) and ``suff_aopc`` (min); plausibility ``auprc``, ``token_f1``, ``iou_f1``; task
``accuracy``, ``f1_macro``. ``--metric NAME:GROUP:max|min`` (repeatable) replaces them.

A run is a JSON object of metric name -> number (or a list of them, as ``trainer.test`` returns), a Lightning
CSVLogger ``metrics.csv`` (the last non-empty value of each column), or a folder (its ``metrics.json``, else its
newest ``**/metrics.csv``)::

    lm-suite nrg runs/unirex runs/sgt runs/attention --names UNIREX SGT Attn --out nrg.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError, DataError
from core.io import atomic_write_text
from core.records import iter_lines, read_text

GROUPS: tuple[str, ...] = ("faithfulness", "plausibility", "task")


@dataclass(frozen=True)
class MetricSpec:
    """One compared metric: its logged name, its desideratum group and its direction."""

    name: str
    group: str
    higher_is_better: bool = True

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        """``NAME:GROUP:max|min`` (the name may itself hold ``:``; the last two fields are group and direction)."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in ("max", "min"):
            raise ConfigError(f"--metric must be NAME:GROUP:max|min, got {text!r}")
        return cls(parts[0], parts[1], parts[2] == "max")


DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("comp_aopc", "faithfulness", True),
    MetricSpec("suff_aopc", "faithfulness", False),
    MetricSpec("auprc", "plausibility", True),
    MetricSpec("token_f1", "plausibility", True),
    MetricSpec("iou_f1", "plausibility", True),
    MetricSpec("accuracy", "task", True),
    MetricSpec("f1_macro", "task", True),
)


@dataclass(frozen=True)
class NRGTable:
    """NRG of each run: raw and normalised metric values, group scores and the overall score (runs in given order).

    ``metrics`` are the compared metrics present in the runs; ``left_out`` the default metrics found in no run;
    ``keys`` the key each run's value was read under (``test/auprc`` or ``auprc``).
    """

    runs: list[str]
    metrics: list[MetricSpec]
    raw: dict[str, dict[str, float]]
    normalised: dict[str, dict[str, float]]
    groups: dict[str, dict[str, float]]
    overall: dict[str, float]
    keys: dict[str, dict[str, str]]
    left_out: list[str] = field(default_factory=list)

    @property
    def group_names(self) -> list[str]:
        """Groups with a metric, in the order of :func:`group_order`."""
        return group_order(self.metrics)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready content (what ``--out`` writes)."""
        return {
            "runs": self.runs,
            "metrics": [{"name": m.name, "group": m.group, "higher_is_better": m.higher_is_better}
                        for m in self.metrics],
            "groups": self.group_names,
            "raw": self.raw,
            "keys": self.keys,
            "normalised": self.normalised,
            "group_scores": self.groups,
            "overall": self.overall,
            "left_out": self.left_out,
        }


# ----------------------------------------------------------------------------------------------------- scoring


def group_order(metrics: Sequence[MetricSpec]) -> list[str]:
    """Groups of ``metrics``: the UNIREX ones (faithfulness, plausibility, task) first, then others as they come."""
    present = list(dict.fromkeys(m.group for m in metrics))
    return [g for g in GROUPS if g in present] + [g for g in present if g not in GROUPS]


def min_max(values: Sequence[float], higher_is_better: bool = True) -> list[float]:
    """Min-max normalised values (1 = best run, 0 = worst); all 1.0 when every value is the same."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(v - lo) / (hi - lo) if higher_is_better else (hi - v) / (hi - lo) for v in values]


def _lookup(values: Mapping[str, Any], name: str, split: str) -> str | None:
    for key in (f"{split}/{name}", name):
        if key in values:
            return key
    return None


def _finite(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{source}: metric {key!r} must be a finite number, got {value!r}")
    return float(value)


def nrg_table(
    runs: Mapping[str, Mapping[str, float]],
    metrics: Sequence[MetricSpec] | None = None,
    split: str = "test",
    sources: Mapping[str, str] | None = None,
) -> NRGTable:
    """NRG of ``runs`` (run name -> metric key -> value), at least two, compared on ``metrics``.

    With the defaults (``metrics=None``), a metric found in no run is left out (listed in ``left_out``); an
    explicitly given metric must be found. A metric found in some runs but not others, or a non-finite value, is a
    DataError naming the run's source (``sources[run]``, else the run name) and the metric.
    """
    names = list(runs)
    if len(names) < 2:
        raise ConfigError(f"NRG compares runs by min-max normalisation: give at least 2 runs, got {len(names)}")
    specs = list(DEFAULT_METRICS if metrics is None else metrics)
    if len({m.name for m in specs}) != len(specs):
        raise ConfigError(f"metric names must be distinct, got {[m.name for m in specs]}")
    where = {run: (sources or {}).get(run, run) for run in names}
    used: list[MetricSpec] = []
    left_out: list[str] = []
    raw: dict[str, dict[str, float]] = {run: {} for run in names}
    keys: dict[str, dict[str, str]] = {run: {} for run in names}
    for spec in specs:
        found = {run: _lookup(runs[run], spec.name, split) for run in names}
        missing = [run for run, key in found.items() if key is None]
        if len(missing) == len(names):
            if metrics is not None:
                raise DataError(f"metric {spec.name!r} ({split}/{spec.name} or {spec.name}) is in none of the runs: "
                                f"{', '.join(where.values())}")
            left_out.append(spec.name)
            continue
        if missing:
            have = next(run for run in names if found[run] is not None)
            raise DataError(f"{where[missing[0]]}: no metric {spec.name!r} (looked for '{split}/{spec.name}' and "
                            f"'{spec.name}'), which {where[have]} has")
        for run in names:
            key = found[run]
            assert key is not None
            raw[run][spec.name] = _finite(runs[run][key], where[run], key)
            keys[run][spec.name] = key
        used.append(spec)
    if not used:
        raise DataError(f"none of the metrics {[m.name for m in specs]} is in the runs: {', '.join(where.values())}")
    normalised: dict[str, dict[str, float]] = {run: {} for run in names}
    for spec in used:
        for run, v in zip(names, min_max([raw[r][spec.name] for r in names], spec.higher_is_better), strict=True):
            normalised[run][spec.name] = v
    groups: dict[str, dict[str, float]] = {run: {} for run in names}
    for run in names:
        for group in group_order(used):
            members = [normalised[run][m.name] for m in used if m.group == group]
            groups[run][group] = sum(members) / len(members)
    overall = {run: sum(groups[run].values()) / len(groups[run]) for run in names}
    return NRGTable(names, used, raw, normalised, groups, overall, keys, left_out)


# ----------------------------------------------------------------------------------------------------- reading


def _number(value: Any, path: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{path}: metric {key!r} must be a number, got {value!r}")
    return float(value)


def _read_json(path: Path) -> dict[str, float]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not readable JSON ({err.msg} at column {err.colno})") from None
    objects = data if isinstance(data, list) else [data]
    if not objects or not all(isinstance(o, dict) for o in objects):
        raise DataError(f"{path}: expected an object of metric name -> number (or a list of such objects)")
    out: dict[str, float] = {}
    for obj in objects:
        out.update({str(k): _number(v, path, str(k)) for k, v in obj.items()})
    return out


def _read_csv(path: Path) -> dict[str, float]:
    """The last non-empty value of each column of a CSVLogger ``metrics.csv``."""
    out: dict[str, float] = {}
    try:
        reader = csv.DictReader(line for _, line in iter_lines(path, newline=""))
        for row in reader:
            for key, cell in row.items():
                if key is None or cell is None or not cell.strip():
                    continue
                try:
                    out[key] = float(cell)
                except ValueError:
                    where = f"{path}:{reader.line_num}"
                    raise DataError(f"{where}: metric {key!r} must be a number, got {cell!r}") from None
    except (OSError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    return out


def metrics_file_of(path: str | Path) -> Path:
    """The file a run argument points to: the file itself, or a folder's newest ``**/metrics.json`` (what a UNIREX
    ``test`` writes into its log folder), else its newest ``**/metrics.csv``."""
    path = Path(path)
    if path.is_dir():
        for name in ("metrics.json", "metrics.csv"):
            found = [p for p in path.rglob(name) if p.is_file()]
            if found:
                return max(found, key=lambda p: (p.stat().st_mtime, str(p)))
        raise DataError(f"{path}: folder holds no **/metrics.json and no **/metrics.csv")
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    return path


def read_metrics_file(path: str | Path) -> dict[str, float]:
    """Metric key -> value of a run (JSON, CSVLogger ``metrics.csv`` or a folder holding one, see the module doc).

    Values may be non-finite here (NaN can be logged); :func:`nrg_table` rejects those it compares.
    """
    file = metrics_file_of(path)
    return _read_csv(file) if file.suffix.lower() == ".csv" else _read_json(file)


def default_names(paths: Sequence[str | Path]) -> list[str]:
    """A folder's own name, a file's parent folder name; repeated names get ``-2``, ``-3``, ... in order."""
    names: list[str] = []
    for p in paths:
        p = Path(p).resolve()
        base = (p.name if p.is_dir() else p.parent.name) or str(p)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


# -------------------------------------------------------------------------------------------------- reporting


def format_table(table: NRGTable) -> str:
    """Plain-text columns: run, each group's NRG, the overall NRG, then the raw metric values."""
    head = ["run", *table.group_names, "NRG", *(m.name for m in table.metrics)]
    rows = [
        [run, *(f"{table.groups[run][g]:.4f}" for g in table.group_names), f"{table.overall[run]:.4f}",
         *(f"{table.raw[run][m.name]:.4f}" for m in table.metrics)]
        for run in table.runs
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                            strict=True)))

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


# ----------------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """CLI: the NRG table of several runs, optionally written as JSON."""
    parser = argparse.ArgumentParser(
        prog="lm-suite nrg",
        description="Normalized Relative Gain of runs over faithfulness, plausibility and task metrics (UNIREX).",
    )
    parser.add_argument("runs", nargs="+", help="metrics JSON, CSVLogger metrics.csv, or a folder holding one")
    parser.add_argument("--names", nargs="+", help="run names (default: each run's folder name)")
    parser.add_argument("--split", default="test", help="metric prefix looked up first: <split>/<name> (default test)")
    parser.add_argument("--metric", action="append", default=None, metavar="NAME:GROUP:max|min",
                        help="compared metric (repeatable; replaces the defaults)")
    parser.add_argument("--out", type=Path, help="where to write the table as JSON (atomically)")
    args = parser.parse_args(argv)
    try:
        specs = None if args.metric is None else [MetricSpec.parse(m) for m in args.metric]
        names = default_names(args.runs) if args.names is None else list(args.names)
        if len(names) != len(args.runs) or len(set(names)) != len(names):
            raise ConfigError(f"--names must give {len(args.runs)} distinct names, got {names}")
        files = [metrics_file_of(p) for p in args.runs]
        runs = {name: read_metrics_file(file) for name, file in zip(names, files, strict=True)}
        table = nrg_table(runs, specs, args.split, {name: str(f) for name, f in zip(names, files, strict=True)})
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table.left_out:
        print(f"note: default metric(s) {', '.join(table.left_out)} found in no run; left out", file=sys.stderr)
    print(format_table(table))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps({"split": args.split, **table.as_dict()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
