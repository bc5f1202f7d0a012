"""RewardBench-style evaluation of reward models (Lambert et al. 2024, "RewardBench").

A pair is correct iff the chosen reward is *strictly* higher than the rejected one (a tie is wrong). Subsets are
grouped into four sections (:data:`SECTIONS`). A section's score is the example-count weighted mean of its
subsets' accuracies, i.e. ``sum_s acc_s * w_s / sum_s w_s`` with ``w_s`` the number of pairs of subset ``s`` in
the evaluated data. RewardBench up-weights ``math-prm`` so that it counts as much as all code subsets together
(its constant is 984 = 6 x 164 while the file holds 447 rows); here, with ``prm_upweight=True``, its weight is the
sum of the ``hep-*`` counts present (its own count when none is present). The overall ``score`` is the plain,
unweighted mean of the sections that have data; a section with no subset present is left out of that mean and
reported as absent. Subsets that belong to no section are reported per subset and counted in the overall pair
``accuracy``, but in no section score.

Scored files (one pair per line, ``subset`` optional)::

    {"subset": "alpacaeval-easy", "chosen_reward": 1.25, "rejected_reward": -0.5}

    python -m lightning_modules.rewardbench --scores scored.jsonl [--out result.json]

The tiny RewardBench-format file in ``data/`` (the synthetic planted pairs of ``datamodules/synthetic.py`` with a
seed the training data does not use, one subset per constraint kind so that every section is present)::

    python -m lightning_modules.rewardbench --write-tiny data/rewardbench_tiny.jsonl --n 64 --seed 777
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
from torchmetrics import Metric

from datamodules.chat import Messages, messages_of
from datamodules.io import DataError, atomic_write_text
from datamodules.records import Record, read_records

SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
PRM_SUBSET = "math-prm"
CODE_SUBSETS: tuple[str, ...] = tuple(s for s in SECTIONS["Reasoning"] if s.startswith("hep-"))
SECTION_OF: dict[str, str] = {subset: section for section, subsets in SECTIONS.items() for subset in subsets}
NO_SECTION = "(none)"

# Which RewardBench subset each planted constraint of datamodules/synthetic.py stands in for.
TINY_SUBSETS: dict[str, str] = {
    "lowercase": "alpacaeval-easy",
    "uppercase": "mt-bench-hard",
    "no_comma": "refusals-dangerous",
    "end_phrase": PRM_SUBSET,
}
TINY_CODE_EVERY = 3  # every third end_phrase pair becomes hep-python, the rest stay math-prm


# ----------------------------------------------------------------------------------------------- scores (pure)


def subset_weights(counts: Mapping[str, int], prm_upweight: bool = True) -> dict[str, float]:
    """Each subset's weight in its section: its count, except math-prm's (the hep-* total) with ``prm_upweight``."""
    weights = {name: float(n) for name, n in counts.items()}
    if prm_upweight and PRM_SUBSET in weights:
        code = sum(counts[s] for s in CODE_SUBSETS if counts.get(s, 0) > 0)
        if code > 0:
            weights[PRM_SUBSET] = float(code)
    return weights


def section_scores(
    subset_accuracy: Mapping[str, float], counts: Mapping[str, int], prm_upweight: bool = True
) -> dict[str, float]:
    """Score of each section with data (count-weighted mean of its subsets) and their plain mean under ``"score"``.

    Sections with no subset in ``subset_accuracy`` are left out (and out of the mean); subsets that belong to no
    section are ignored here. ``counts`` must give a positive count for every subset of ``subset_accuracy``.
    """
    for name in subset_accuracy:
        if counts.get(name, 0) <= 0:
            raise ValueError(f"subset {name!r} has an accuracy but no positive example count in `counts`")
    weights = subset_weights({name: counts[name] for name in subset_accuracy}, prm_upweight)
    out: dict[str, float] = {}
    for section, members in SECTIONS.items():
        present = [s for s in members if s in subset_accuracy]
        if present:
            total = sum(weights[s] for s in present)
            out[section] = sum(subset_accuracy[s] * weights[s] for s in present) / total
    if out:
        out["score"] = sum(out.values()) / len(out)
    return out


def ordered_subsets(names: Sequence[str] | set[str]) -> list[str]:
    """Subsets in section order (RewardBench's listing), then those of no section alphabetically."""
    known = [s for subsets in SECTIONS.values() for s in subsets if s in names]
    return known + sorted(set(names) - set(known))


# ----------------------------------------------------------------------------------------------------- metrics


def _check_rewards(chosen_rewards: Tensor, rejected_rewards: Tensor) -> tuple[Tensor, Tensor]:
    if chosen_rewards.ndim != 1 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            "chosen_rewards and rejected_rewards must both have shape (B,), got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    return chosen_rewards.detach(), rejected_rewards.detach()


class PairwiseAccuracy(Metric):
    """Fraction of pairs whose chosen reward is strictly higher than the rejected one (ties are wrong).

    States are counts summed across processes, so the value under DDP equals the one over all pairs.
    ``compute`` is NaN before any pair was seen.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, chosen_rewards: Tensor, rejected_rewards: Tensor) -> None:
        """Count a batch: ``chosen_rewards`` (B,), ``rejected_rewards`` (B,)."""
        chosen, rejected = _check_rewards(chosen_rewards, rejected_rewards)
        self.correct += (chosen > rejected).sum().to(self.correct.device)
        self.total += chosen.numel()

    def compute(self) -> Tensor:
        return self.correct.double().div(self.total).float()


class RewardBenchAccuracy(Metric):
    """Per-subset pair accuracy, RewardBench section scores and their mean.

    ``update`` takes ``subset_ids`` (B,) indexing ``subsets``; ``-1`` marks a pair of no subset, which counts in
    ``accuracy`` only. ``compute`` returns tensors under ``accuracy`` (all pairs), ``subset/<name>`` (subsets with
    pairs), ``section/<name>`` (sections with data, see :func:`section_scores`) and ``score`` (their mean).
    Per-subset correct / total counts are summed across processes, so the result under DDP is exact.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self, subsets: Sequence[str], prm_upweight: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = list(subsets)
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"subsets must be distinct non-empty strings, got {names}")
        self.subsets = tuple(names)
        self.index = {name: i for i, name in enumerate(names)}
        self.prm_upweight = prm_upweight
        # One slot per subset plus a last one for pairs of no subset.
        self.add_state("correct", default=torch.zeros(len(names) + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(names) + 1, dtype=torch.long), dist_reduce_fx="sum")

    def subset_ids(self, names: Sequence[str | None]) -> Tensor:
        """(B,) long ids of subset names (``None`` -> -1); an unknown name is a ValueError."""
        try:
            return torch.tensor([-1 if n is None else self.index[n] for n in names], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"unknown subset {e.args[0]!r}: the metric was built with {list(self.subsets)}") from None

    def update(self, chosen_rewards: Tensor, rejected_rewards: Tensor, subset_ids: Tensor) -> None:
        """Count a batch: rewards (B,), (B,) and ``subset_ids`` (B,) long in [-1, len(subsets))."""
        chosen, rejected = _check_rewards(chosen_rewards, rejected_rewards)
        if subset_ids.shape != chosen.shape or subset_ids.is_floating_point() or subset_ids.is_complex():
            raise ValueError(f"subset_ids must be an integer tensor of shape {tuple(chosen.shape)}")
        n = len(self.subsets)
        if subset_ids.numel() and (int(subset_ids.min()) < -1 or int(subset_ids.max()) >= n):
            raise ValueError(f"subset_ids must lie in [-1, {n}), got {subset_ids.tolist()}")
        slot = torch.where(subset_ids < 0, n, subset_ids).long().to(self.total.device)  # (B,)
        hit = (chosen > rejected).long().to(self.total.device)  # (B,)
        self.correct = self.correct.index_add(0, slot, hit)
        self.total = self.total.index_add(0, slot, torch.ones_like(hit))

    def counts(self) -> dict[str, int]:
        """Pairs seen per subset (with any) by this process; ``compute`` syncs, this does not."""
        return {name: t for name, t in zip(self.subsets, self.total.tolist()[:-1], strict=True) if t > 0}

    def compute(self) -> dict[str, Tensor]:
        correct, total = self.correct.tolist(), self.total.tolist()
        n = sum(total)
        out = {"accuracy": sum(correct) / n if n else math.nan}
        accuracy = {name: c / t for name, c, t in zip(self.subsets, correct[:-1], total[:-1], strict=True) if t > 0}
        counts = {name: t for name, t in zip(self.subsets, total[:-1], strict=True) if t > 0}
        out.update({f"subset/{name}": acc for name, acc in accuracy.items()})
        scores = section_scores(accuracy, counts, self.prm_upweight)
        out.update({f"section/{s}": v for s, v in scores.items() if s != "score"})
        if "score" in scores:
            out["score"] = scores["score"]
        return {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------------ reading


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


# ---------------------------------------------------------------------------------------------------- reporting


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


# ------------------------------------------------------------------------------------------------- tiny dataset


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


# ----------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: RewardBench table and JSON of a scored file, or write the tiny RewardBench-format file."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.rewardbench",
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
