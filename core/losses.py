"""Log-probabilities of target tokens from logits."""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def token_logps(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under ``logits``: (..., V), (...) -> (...), computed in float32."""
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the last dim where ``mask``: (B, L), (B, L) -> (B,)."""
    return (values * mask).sum(-1)


def response_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean NLL of ``targets`` where ``mask``: logits (N, V), targets (N,), mask (N,) -> (loss, metrics).

    ``N`` is any flat set of predicted positions (here: only the positions that predict a response token). The
    mean is over tokens, not sequences, as in Hugging Face's causal-LM loss with ``labels=-100`` on the prompt.
    """
    nll = -token_logps(logits, targets)  # (N,)
    m = mask.to(nll.dtype)
    n_tokens = m.sum()  # the true count (0 when nothing is masked in); only the division is guarded
    loss = (nll * m).sum() / n_tokens.clamp(min=1)
    return loss, {"nll": loss.detach(), "tokens": n_tokens.detach()}


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


def global_token_mean(loss: Tensor, tokens: Tensor) -> Tensor:
    """Turn this rank's token-mean ``loss`` over its ``tokens`` into its share of the token mean over all ranks.

    Data-parallel gradients (DDP, FSDP2) and ``sync_dist`` logging average over the ranks, so each rank returns
    ``sum_r / (N / world)`` with ``N`` the tokens of all ranks: the average over ranks is then ``sum / N``, the loss
    (and gradient) of one process on the whole global batch, however the tokens fall on the ranks. A collective
    (every rank must call it); one process: ``loss`` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss
    total = tokens.detach().to(torch.float64).reshape(1).clone()
    dist.all_reduce(total)
    share = (total / dist.get_world_size()).clamp(min=torch.finfo(torch.float64).tiny).to(loss.dtype)
    return loss * tokens.detach().clamp(min=1).to(loss.dtype) / share
