"""MSD's modality saliency, weighting schemes and weighted objective (plain tensors in, tensors out).

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021: the
student learns from the teacher on the full input and, per modality m, on the input that holds only m (both models
see only that modality). How much m matters differs per instance, measured by the teacher's *saliency* of m: how
far its prediction moves when m is removed. The modality terms are weighted from the saliencies:

    L = w_task * CE(s, y) + w_kd * KD(s, t) + mean_i sum_m w_{i,m} * KD(s_m, t_m)_i

Modalities are indexed m = 0 (image), 1 (text); every function takes the logits on the inputs that keep *only*
one modality, (M, B, L) in that order; with two modalities, removing m is keeping only the other one.

Saliency (:func:`modality_saliency`, per instance and modality, shape (B, M)):
- ``kl``: ``KL(p_full || p_without_m)`` (softmax; multi-label: per-label Bernoulli KLs, summed over labels);
- ``prob_drop``: ``p_full(y) - p_without_m(y)``, the drop of the true class's probability (multi-label: the mean
  over labels of the drop of the probability given to each label's true value).

Weights of the modality terms, (B, M), one pure function per scheme (:mod:`lightning_modules.msd.weighting` holds
the scheme objects that apply them); every scheme averages 1 over modalities so the schemes compare at one scale
(the normalisations are our choices):
- ``uniform`` (:func:`uniform_weights`): 1 for every term;
- ``dataset`` (:func:`dataset_weights`): ``M * s̄_m / sum_m' s̄_m'`` from each modality's mean saliency over the
  training set (negative saliencies clipped to 0; all zero gives uniform);
- ``instance`` (:func:`instance_weights`): ``M * softmax_m(s_{i,m} / temperature)`` per instance.
The learned scheme (a weight network trained by bilevel optimisation) is :mod:`lightning_modules.msd.bilevel`'s.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from core.losses import kd_sigmoid, kd_softmax, task_loss

SaliencyKind = Literal["kl", "prob_drop"]


def modality_saliency(full_logits: Tensor, only_logits: Tensor, labels: Tensor, kind: SaliencyKind = "kl",
                      multi_label: bool = False) -> Tensor:
    """Teacher saliency of each modality: full_logits (B, L), only_logits (2, B, L) (image only, text only) -> (B, 2).

    The saliency of the image is measured on the text-only input and the other way round.
    """
    if only_logits.shape[0] != 2:
        raise ValueError(f"saliency is defined for two modalities (image, text), got {only_logits.shape[0]}")
    full = full_logits.detach().float().unsqueeze(0)  # (1, B, L)
    without = only_logits.detach().float().flip(0)  # (M, B, L): [text only = without image, image only = without text]
    if kind == "kl":
        if multi_label:
            p, q = full, without
            kl = (torch.sigmoid(p) * (F.logsigmoid(p) - F.logsigmoid(q))
                  + torch.sigmoid(-p) * (F.logsigmoid(-p) - F.logsigmoid(-q)))  # (M, B, L)
            return kl.sum(-1).T  # (B, M)
        log_p, log_q = F.log_softmax(full, -1), F.log_softmax(without, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).T  # (B, M)
    if kind == "prob_drop":
        if multi_label:
            y = labels.float().unsqueeze(0)  # (1, B, L)
            true_p = lambda z: (y * torch.sigmoid(z) + (1 - y) * torch.sigmoid(-z)).mean(-1)  # noqa: E731
            return (true_p(full) - true_p(without)).T  # (B, M)
        index = labels.view(1, -1, 1).expand(without.shape[0], -1, 1)
        p_full = full.softmax(-1).expand_as(without).gather(-1, index).squeeze(-1)  # (M, B)
        p_without = without.softmax(-1).gather(-1, index).squeeze(-1)  # (M, B)
        return (p_full - p_without).T  # (B, M)
    raise ValueError(f"saliency must be 'kl' or 'prob_drop', got {kind!r}")


def uniform_weights(saliency: Tensor) -> Tensor:
    """The ``uniform`` scheme's weights (B, M) for saliencies (B, M): 1 for every modality term."""
    return torch.ones(*saliency.shape, device=saliency.device)


def dataset_weights(mean: Tensor) -> Tensor:
    """The ``dataset`` scheme's weights (M,) from each modality's mean saliency (M,): ``M * s̄_m / sum s̄`` with
    negative means clipped to 0; all zero gives uniform weights."""
    mean = mean.float().clamp(min=0)
    total = mean.sum()
    return torch.where(total > 0, len(mean) * mean / total.clamp(min=torch.finfo(mean.dtype).tiny),
                       torch.ones_like(mean))


def instance_weights(saliency: Tensor, temperature: float = 1.0) -> Tensor:
    """The ``instance`` scheme's weights (B, M) for saliencies (B, M): ``M * softmax_m(s_{i,m} / temperature)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return saliency.shape[-1] * torch.softmax(saliency.float() / temperature, dim=-1)


def msd_loss(student_full: Tensor, teacher_full: Tensor, student_only: Tensor, teacher_only: Tensor, labels: Tensor,
             weights: Tensor, temperature: float = 1.0, multi_label: bool = False, task_weight: float = 1.0,
             kd_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The MSD objective. *_full: (B, L); *_only: (M, B, L), the logits on the input that keeps only modality m;
    weights: (B, M), used as given (detach saliency-based weights; learned ones stay attached for the meta
    step). Returns the loss and detached parts (``task``, ``kd``, ``kd_image``, ``kd_text``...)."""
    kd = kd_sigmoid if multi_label else kd_softmax
    task, _ = task_loss(student_full, labels, multi_label)
    full_kd, _ = kd(student_full, teacher_full, temperature)
    per_modality = torch.stack([kd(s, t, temperature, reduction="none")[0]
                                for s, t in zip(student_only, teacher_only, strict=True)], dim=-1)  # (B, M)
    modality_kd = (weights * per_modality).sum(-1).mean()  # weights as given: gradients reach them unless detached
    loss = task_weight * task + kd_weight * full_kd + modality_kd
    parts = {"task": task.detach(), "kd": full_kd.detach(), "modality_kd": modality_kd.detach()}
    for name, value in zip(("kd_image", "kd_text"), per_modality.detach().mean(0), strict=False):
        parts[name] = value
    return loss, parts
