"""Reward-model losses: Bradley-Terry, reward centering, and Critic-RM's scheduled critique + reward objective.

Yu et al. 2025 (NAACL), "Self-Generated Critiques Boost Reward Modeling for Language Models", fine-tune one model
with two heads on two objectives at once: the language-model head learns to write the critique of a response
(token-mean NLL over the critique tokens) and the scalar reward head learns the preference (Bradley-Terry on
chosen vs rejected rewards). The weight between them moves over training::

    L(t) = lambda(t) * NLL_critique + (1 - lambda(t)) * BT,      BT = -mean log sigmoid(r_chosen - r_rejected)

``lambda(t)`` follows :func:`critique_weight` (constant, linear or cosine decay from ``start`` to ``end``; the
schedule family is the paper's, its exact values are our defaults). An optional reward-centering term
``eta * mean((r_chosen + r_rejected)^2)`` (Eisenstein et al. 2023, "Helping or Herding?") keeps rewards near zero
without changing which response wins. A plain reward model is the special case lambda = 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Schedule = Literal["constant", "linear", "cosine"]


def critique_weight(step: int, total_steps: int, schedule: Schedule, start: float, end: float) -> float:
    """lambda at ``step`` of ``total_steps``: ``start`` throughout (constant), or decayed to ``end`` at the end.

    ``linear``: start + (end - start) p;  ``cosine``: end + (start - end) (1 + cos(pi p)) / 2;  p = step / total,
    clipped to [0, 1] (p = 1 when ``total_steps`` <= 0, so an unknown length gives the final weight).
    """
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"critique weights must lie in [0, 1], got start={start}, end={end}")
    if schedule == "constant":
        return start
    progress = 1.0 if total_steps <= 0 else min(1.0, max(0.0, step / total_steps))
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}: expected constant, linear or cosine")


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """-mean log sigmoid(r_c - r_r) over pairs: (B,), (B,) -> (loss, metrics)."""
    margin = chosen.float() - rejected.float()  # (B,)
    loss = -F.logsigmoid(margin).mean()
    metrics = {
        "rewards/chosen": chosen.detach().float(),
        "rewards/rejected": rejected.detach().float(),
        "rewards/margins": margin.detach(),
        "rewards/accuracies": (margin.detach() > 0).float(),  # strictly higher, as RewardBench counts
    }
    return loss, metrics


def critic_rm_loss(
    chosen: Tensor,
    rejected: Tensor,
    critique_nll: Tensor | None,
    critique_weight: float,
    centering: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """lambda * critique NLL + (1 - lambda) * BT (+ centering): rewards (B,), (B,), NLL a scalar or None.

    ``critique_nll`` None (the plain reward model) requires ``critique_weight == 0``. Metrics hold the per-pair
    reward values (B,) and the scalar parts ``loss/bt``, ``loss/critique``, ``loss/centering``, ``lambda``.
    """
    if critique_nll is None and critique_weight != 0:
        raise ValueError("critique_weight must be 0 without critiques (the plain reward model)")
    bt, metrics = bradley_terry_loss(chosen, rejected)
    loss = (1.0 - critique_weight) * bt
    if critique_nll is not None:
        loss = loss + critique_weight * critique_nll
        metrics["loss/critique"] = critique_nll.detach()
    metrics["loss/bt"] = bt.detach()
    if centering > 0:
        center = (chosen.float() + rejected.float()).pow(2).mean()
        loss = loss + centering * center
        metrics["loss/centering"] = center.detach()
    metrics["lambda"] = bt.new_tensor(critique_weight)
    return loss, metrics
