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

Scored files (one pair per line, ``subset`` optional; read and tabled by :mod:`pipelines.rewardbench`)::

    {"subset": "alpacaeval-easy", "chosen_reward": 1.25, "rejected_reward": -0.5}

    lm-suite rewardbench --scores scored.jsonl [--out result.json]

The tiny RewardBench-format file in ``data/`` (the synthetic planted pairs of ``datamodules/synthetic.py`` with a
seed the training data does not use, one subset per constraint kind so that every section is present)::

    lm-suite rewardbench --write-tiny data/rewardbench_tiny.jsonl --n 64 --seed 777
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

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
