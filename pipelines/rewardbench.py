"""RewardBench files: read prompt/chosen/rejected rows with their subsets, score files, the section table, and a tiny
RewardBench-format file made from the planted synthetic pairs (``lm-suite rewardbench``).

The metrics themselves (section weights, :class:`~lightning_modules.critic_rm.metrics.RewardBenchAccuracy`) live
with Critic-RM; this module is the file side, used by the scoring CLI and the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.chat import Messages, messages_of
from core.errors import DataError
from core.io import atomic_write_text
from core.records import Record, read_records
from lightning_modules.critic_rm.metrics import (
    NO_SECTION,
    PRM_SUBSET,
    SECTION_OF,
    SECTIONS,
    RewardBenchAccuracy,
    ordered_subsets,
    subset_weights,
)

# Which RewardBench subset each planted constraint of datamodules/synthetic.py stands in for.
TINY_SUBSETS: dict[str, str] = {
    "lowercase": "alpacaeval-easy",
    "uppercase": "mt-bench-hard",
    "no_comma": "refusals-dangerous",
    "end_phrase": PRM_SUBSET,
}


TINY_CODE_EVERY = 3  # every third end_phrase pair becomes hep-python, the rest stay math-prm


@dataclass(frozen=True)
class RewardBenchPair:
    """One validated RewardBench row; ``where`` is ``path:line`` (or ``path: row N``)."""

    id: Any
    prompt: Messages
    chosen: Messages
    rejected: Messages
    subset: str | None
    where: str


@dataclass(frozen=True)
class ScoredPair:
    """One line of a scored file: the two rewards a model gave a pair, and its subset if any."""

    chosen_reward: float
    rejected_reward: float
    subset: str | None
    where: str


def _subset_of(row: dict[str, Any], where: str, required: bool) -> str | None:
    subset = row.get("subset")
    if subset is None:
        if required:
            raise DataError(f"{where}: missing field 'subset' (a RewardBench subset name such as 'alpacaeval-easy')")
        return None
    if not isinstance(subset, str) or not subset:
        raise DataError(f"{where}: field 'subset' must be a non-empty string, got {subset!r}")
    return subset


def read_rewardbench(
    path_or_paths: str | Path | Sequence[str | Path], require_subset: bool = True
) -> list[RewardBenchPair]:
    """Rows of RewardBench-format files (JSONL / JSON list / Parquet); prompt/chosen/rejected strings or messages.

    A missing or malformed field is a :class:`DataError` naming the file and line. With ``require_subset=False``
    any preference file reads (``subset`` is then None where absent).
    """
    out: list[RewardBenchPair] = []
    for row, where in _records(path_or_paths):
        fields = {}
        for field, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
            if row.get(field) is None:
                raise DataError(f"{where}: missing field {field!r} (a string or a list of chat messages)")
            fields[field] = messages_of(row[field], role, field, where)
        subset = _subset_of(row, where, require_subset)
        out.append(
            RewardBenchPair(row.get("id"), fields["prompt"], fields["chosen"], fields["rejected"], subset, where)
        )
    return out


def _reward(row: dict[str, Any], field: str, where: str) -> float:
    value = row.get(field)
    if value is None:
        raise DataError(f"{where}: missing field {field!r} (a number)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: field {field!r} must be a finite number, got {value!r}")
    return float(value)


def read_scored(path_or_paths: str | Path | Sequence[str | Path]) -> list[ScoredPair]:
    """Lines of ``{"subset"?, "chosen_reward", "rejected_reward"}``; a bad line is a DataError naming it."""
    out = [
        ScoredPair(_reward(row, "chosen_reward", where), _reward(row, "rejected_reward", where),
                   _subset_of(row, where, required=False), where)
        for row, where in _records(path_or_paths)
    ]
    if not out:
        raise DataError(f"{', '.join(map(str, _paths(path_or_paths)))}: no scored pairs")
    return out


def _paths(path_or_paths: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(path_or_paths)] if isinstance(path_or_paths, (str, Path)) else [str(p) for p in path_or_paths]


def _records(path_or_paths: str | Path | Sequence[str | Path]) -> list[Record]:
    return read_records(_paths(path_or_paths))


def evaluate_scored(path_or_paths: str | Path | Sequence[str | Path], prm_upweight: bool = True) -> dict[str, Any]:
    """The result of a scored file as plain numbers: the metric's keys plus ``count/*``, ``weight/*``, ``pairs``."""
    rows = read_scored(path_or_paths)
    metric = RewardBenchAccuracy(ordered_subsets({r.subset for r in rows if r.subset}), prm_upweight=prm_upweight)
    chosen = torch.tensor([r.chosen_reward for r in rows], dtype=torch.float64)  # (N,) exact JSON doubles
    rejected = torch.tensor([r.rejected_reward for r in rows], dtype=torch.float64)  # (N,)
    metric.update(chosen, rejected, metric.subset_ids([r.subset for r in rows]))
    result: dict[str, Any] = {k: v.item() for k, v in metric.compute().items()}
    counts = metric.counts()
    result.update({f"count/{name}": n for name, n in counts.items()})
    weights = subset_weights({s: n for s, n in counts.items() if s in SECTION_OF}, prm_upweight)
    result.update({f"weight/{name}": w for name, w in weights.items()})
    result["pairs"] = len(rows)
    result["absent_sections"] = [s for s in SECTIONS if f"section/{s}" not in result]
    return result


def _number(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _cell(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(_number(value), fmt)


def format_table(result: Mapping[str, Any]) -> str:
    """Markdown tables of a result (from :class:`RewardBenchAccuracy` or :func:`evaluate_scored`).

    Subsets in section order with their accuracy (and pair count and section weight when known), then the
    section scores (``absent`` where a section has no data), the overall score and the all-pairs accuracy.
    """
    subsets = ordered_subsets({k.split("/", 1)[1] for k in result if k.startswith("subset/")})
    with_counts = any(k.startswith("count/") for k in result)
    lines: list[str] = []
    if subsets:
        head = "| section | subset | pairs | weight | accuracy |" if with_counts else "| section | subset | accuracy |"
        lines += [head, "|---|---|" + ("---:|---:|" if with_counts else "") + "---:|"]
        for name in subsets:
            cells = [SECTION_OF.get(name, NO_SECTION), name]
            if with_counts:
                cells += [_cell(result.get(f"count/{name}"), ".0f"), _cell(result.get(f"weight/{name}"), "g")]
            lines.append("| " + " | ".join([*cells, _cell(result[f"subset/{name}"])]) + " |")
        lines.append("")
    lines += ["| section | score |", "|---|---:|"]
    present = 0
    if subsets:
        for section in SECTIONS:
            value = result.get(f"section/{section}")
            present += value is not None
            lines.append(f"| {section} | {'absent' if value is None else _cell(value)} |")
        if "score" in result:
            lines.append(f"| **score** (mean of {present} sections) | {_cell(result['score'])} |")
    pairs = f"all {result['pairs']} pairs" if "pairs" in result else "all pairs"
    lines.append(f"| accuracy ({pairs}) | {_cell(result['accuracy'])} |")
    return "\n".join(lines)


def tiny_rewardbench_rows(n: int = 64, seed: int = 777) -> list[dict[str, Any]]:
    """RewardBench-format rows from the planted synthetic pairs; every section must end up present."""
    from datamodules.synthetic import make_pairs

    rows, end_phrase_seen = [], 0
    for i, pair in enumerate(make_pairs(n, seed)):
        subset = TINY_SUBSETS[pair["constraint"]]
        if subset == PRM_SUBSET:
            end_phrase_seen += 1
            if end_phrase_seen % TINY_CODE_EVERY == 0:
                subset = "hep-python"
        rows.append({"id": i, "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
                     "subset": subset})
    missing = [s for s, members in SECTIONS.items() if not any(r["subset"] in members for r in rows)]
    if missing:
        raise ValueError(f"n={n}, seed={seed} leaves sections {missing} empty: use more pairs or another seed")
    return rows


def write_tiny_rewardbench(path: str | Path, n: int = 64, seed: int = 777) -> None:
    """Write :func:`tiny_rewardbench_rows` as JSONL, atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in tiny_rewardbench_rows(n, seed)))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: RewardBench table and JSON of a scored file, or write the tiny RewardBench-format file."""
    parser = argparse.ArgumentParser(
        prog="lm-suite rewardbench",
        description="RewardBench accuracy, section scores and overall score of scored pairs (Lambert et al. 2024).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--scores", nargs="+", help='JSONL / JSON / Parquet of {"subset"?, "chosen_reward", '
                      '"rejected_reward"}')
    mode.add_argument("--write-tiny", type=Path, metavar="PATH", help="write the tiny RewardBench-format file")
    parser.add_argument("--out", type=Path, help="where to write the result JSON (atomically)")
    parser.add_argument("--no-prm-upweight", action="store_true", help="weight math-prm by its own count")
    parser.add_argument("--n", type=int, default=64, help="pairs in the tiny file")
    parser.add_argument("--seed", type=int, default=777, help="seed of the tiny file")
    args = parser.parse_args(argv)
    try:
        if args.write_tiny is not None:
            write_tiny_rewardbench(args.write_tiny, args.n, args.seed)
            print(f"wrote {args.n} pairs to {args.write_tiny}")
            return 0
        result = evaluate_scored(args.scores, prm_upweight=not args.no_prm_upweight)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
