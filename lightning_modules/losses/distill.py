"""Knowledge-distillation losses for MSD: softmax KD, sigmoid (multi-label) KD, and the task loss.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021,
distil a multimodal teacher into a smaller student with a KD term on the full input plus one KD term per modality
(both models see only that modality); the per-modality terms are weighted per instance, so every loss here can
also return per-example values (``reduction="none"``, shape (B,)) for the caller to weight.

- :func:`kd_softmax` (single-label): ``T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al. 2015, "Distilling
  the Knowledge in a Neural Network"; the ``T^2`` keeps the gradient's scale independent of ``T``).
- :func:`kd_sigmoid` (multi-label): each label is its own binary distribution ``q = sigmoid(t / T)`` against
  ``p = sigmoid(s / T)``; ``T^2 * KL(Bernoulli(q) || Bernoulli(p))`` averaged over the labels. This equals BCE with
  the soft targets ``q`` minus the targets' entropy, so it is 0 when the student matches the teacher.
- :func:`task_loss`: cross-entropy (single-label) or BCE-with-logits (multi-label, averaged over labels).

Teacher logits are targets: they are detached. Every function returns ``(loss, metrics)`` with detached metrics.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "none"]


def _check(student: Tensor, teacher: Tensor, temperature: float, reduction: str) -> None:
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f"student and teacher logits must both be (B, L), got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def kd_softmax(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` per example (B,), or its batch mean.

    Metrics: ``kd_loss`` (batch mean) and ``agreement`` (fraction of examples where the argmaxes agree).
    """
    _check(student_logits, teacher_logits, temperature, reduction)
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C) student
    log_q = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, C) teacher
    per_example = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1) * temperature**2  # (B,)
    agreement = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
    metrics = {"kd_loss": per_example.detach().mean(), "agreement": agreement.detach()}
    return (per_example if reduction == "none" else per_example.mean()), metrics


def kd_sigmoid(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-label binary KL ``T^2 * KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T)))``, mean over labels: (B,) or mean.

    Metrics: ``kd_loss`` (batch mean) and ``agreement`` (fraction of (example, label) decisions at 0.5 that agree).
    """
    _check(student_logits, teacher_logits, temperature, reduction)
    s = student_logits.float() / temperature  # (B, L)
    t = teacher_logits.detach().float() / temperature  # (B, L)
    q = torch.sigmoid(t)
    # log q, log(1 - q), log p, log(1 - p) through logsigmoid: finite for any finite logit.
    kl = q * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - q) * (F.logsigmoid(-t) - F.logsigmoid(-s))  # (B, L)
    per_example = kl.mean(-1) * temperature**2  # (B,)
    agreement = ((student_logits > 0) == (teacher_logits > 0)).float().mean()
    metrics = {"kd_loss": per_example.detach().mean(), "agreement": agreement.detach()}
    return (per_example if reduction == "none" else per_example.mean()), metrics


def task_loss(
    logits: Tensor, labels: Tensor, multi_label: bool, reduction: Reduction = "mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy on class ids ``labels`` (B,), or BCE-with-logits on multi-hot ``labels`` (B, L) averaged over
    labels; per example (B,) with ``reduction="none"``. Metrics: ``task_loss`` (batch mean)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if multi_label:
        if labels.shape != logits.shape:
            raise ValueError(f"multi-label needs labels (B, L) like the logits {tuple(logits.shape)}, got "
                             f"{tuple(labels.shape)}")
        per_example = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(-1)
    else:
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0] or logits.ndim != 2:
            raise ValueError(f"single-label needs logits (B, C) and class ids (B,), got {tuple(logits.shape)} and "
                             f"{tuple(labels.shape)}")
        per_example = F.cross_entropy(logits.float(), labels.long(), reduction="none")  # (B,)
    metrics = {"task_loss": per_example.detach().mean()}
    return (per_example if reduction == "none" else per_example.mean()), metrics
