"""Preference losses on sequence log-probabilities: DPO and its variants.

With h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) for chosen y_w and rejected y_l:

- ``sigmoid`` (DPO; Rafailov et al. 2023, "Direct Preference Optimization"):
  ``-log sigmoid(beta h)``; with label smoothing eps (conservative DPO, Mitchell 2023):
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
- ``ipo`` (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", eq. 17): ``(h' - 1 / (2 beta))^2`` where h' uses log-ratios averaged per response token
  when lengths are given (the normalisation TRL and the IPO authors use).
- ``hinge`` (SLiC; Zhao et al. 2023): ``relu(1 - beta h)``.
- RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): ``+ alpha * NLL(chosen)``, the NLL
  being the mean negative log-likelihood per chosen token over the batch (as TRL's ``sft`` term).

Metrics use the names TRL users know: ``rewards/chosen`` = beta (log pi - log ref) on chosen, and so on.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossType = Literal["sigmoid", "ipo", "hinge"]


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
    rpo_alpha: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean preference loss over the batch and per-pair metrics (detached).

    All log-prob arguments are summed over response tokens, shape ``(B,)``. ``chosen_nll`` is a scalar
    (mean NLL per chosen token) and is needed only when ``rpo_alpha > 0``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen - ref_chosen  # (B,)
    rejected_logratios = policy_rejected - ref_rejected  # (B,)
    if loss_type == "sigmoid":
        h = chosen_logratios - rejected_logratios
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    elif loss_type == "ipo":
        c, r = chosen_logratios, rejected_logratios
        if chosen_lengths is not None and rejected_lengths is not None:
            c = c / chosen_lengths.clamp(min=1)
            r = r / rejected_lengths.clamp(min=1)
        losses = (c - r - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: expected sigmoid, ipo or hinge")
    loss = losses.mean()
    if rpo_alpha > 0:
        if chosen_nll is None:
            raise ValueError("rpo_alpha > 0 needs chosen_nll")
        loss = loss + rpo_alpha * chosen_nll

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    metrics = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": policy_chosen.detach(),
        "logps/rejected": policy_rejected.detach(),
    }
    if chosen_nll is not None:
        metrics["nll_loss"] = chosen_nll.detach().reshape(1)
    return loss, metrics
