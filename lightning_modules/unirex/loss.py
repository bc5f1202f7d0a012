"""UNIREX losses and the top-k% binarisation of rationale scores.

Chan et al. 2022 (ICML), "UNIREX: A Unified Learning Framework for Language Model Rationale Extraction", train a
rationale extractor and a task model together. The extractor scores every input token; the top-k% tokens (k over
``{1, 5, 10, 20, 50}``) form a hard rationale, and the task model is trained so that

- comprehensiveness: removing the rationale hurts, margin criterion ``relu(L_task - L_comp + m)``, m = 1.0;
- sufficiency: the rationale alone is enough, margin criterion ``relu(L_suff - L_task + m)``, m = 0.1 (also the
  plain difference ``L_suff - L_task`` and ``KL(p_suff || p_task)``);
- plausibility: the extractor's token logits match human rationales, BCE with the positive class reweighted by
  ``#negatives / #positives`` over the batch;

each term weighted and optional, next to the task cross-entropy. ``L_task``, ``L_comp``, ``L_suff`` are per-example
cross-entropies of the gold label on the full input, the input without the rationale and the rationale alone.
Every loss here takes plain tensors and returns ``(loss, metrics)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

CompCriterion = Literal["margin", "diff"]
SuffCriterion = Literal["margin", "diff", "kl"]


def topk_counts(candidate: Tensor, ks: Sequence[float]) -> Tensor:
    """Tokens kept per row for each k%: ``max(1, round(n * k / 100))`` of the row's ``n`` candidates, at most ``n``.

    ``round`` is ``torch.round`` (half to even), as in the UNIREX reference code; a row without candidates keeps 0.
    candidate: (N, T) bool -> (K, N) int64.
    """
    n = candidate.sum(-1).to(torch.float64)  # (N,)
    k = torch.tensor([float(x) for x in ks], dtype=torch.float64, device=candidate.device)  # (K,)
    counts = torch.round(n.unsqueeze(0) * k.unsqueeze(1) / 100.0).clamp(min=1.0)  # (K, N)
    return torch.minimum(counts, n.unsqueeze(0)).long()


def topk_masks(scores: Tensor, candidate: Tensor, ks: Sequence[float]) -> Tensor:
    """Hard rationales: for each k%, the ``topk_counts`` highest-scoring candidate tokens of each row.

    Only candidate tokens can be chosen (special tokens such as [CLS], the query and padding never are, so a model
    input built from a rationale always keeps them); ties go to the earlier position. One sort serves every k.
    scores: (N, T); candidate: (N, T) bool -> (K, N, T) bool.
    """
    if any(not 0.0 < float(k) <= 100.0 for k in ks):
        raise ValueError(f"k values are percentages in (0, 100], got {list(ks)}")
    masked = scores.detach().float().masked_fill(~candidate, float("-inf"))  # (N, T)
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices  # (N, T)
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # (N, T): each token's place in the order
    counts = topk_counts(candidate, ks)  # (K, N)
    return (rank.unsqueeze(0) < counts.unsqueeze(-1)) & candidate.unsqueeze(0)  # (K, N, T)


def rationale_inputs(attention_mask: Tensor, candidate: Tensor, rationale: Tensor) -> tuple[Tensor, Tensor]:
    """Attention masks of the comprehensiveness and sufficiency inputs for hard rationales ``(..., N, T)``.

    comprehensiveness: every real token but the rationale; sufficiency: the rationale plus every real token that is
    not a candidate ([CLS], separators, the query), so both inputs keep the special tokens.
    """
    real = attention_mask.bool()
    return real & ~rationale, real & (rationale | ~candidate)


def per_example_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``labels`` per example: logits (..., B, C), labels (B,) -> (..., B)."""
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, labels.expand(lead).reshape(-1), reduction="none").view(lead)


def comprehensiveness_loss(
    task_nll: Tensor, comp_nll: Tensor, criterion: CompCriterion = "margin", margin: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Removing the rationale should raise the loss: task_nll (B,), comp_nll (K, B) -> mean over k and examples.

    ``margin``: ``relu(L_task - L_comp + m)``; ``diff``: ``L_task - L_comp``.
    """
    gap = task_nll.unsqueeze(0) - comp_nll  # (K, B)
    if criterion == "margin":
        per = F.relu(gap + margin)
    elif criterion == "diff":
        per = gap
    else:
        raise ValueError(f"comprehensiveness criterion must be 'margin' or 'diff', got {criterion!r}")
    return per.mean(), {"comp_gap": (-gap).detach().mean(), "comp_per_k": per.detach().mean(-1)}


def sufficiency_loss(
    task_nll: Tensor,
    suff_nll: Tensor,
    criterion: SuffCriterion = "margin",
    margin: float = 0.1,
    task_logits: Tensor | None = None,
    suff_logits: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The rationale alone should do as well as the full input: task_nll (B,), suff_nll (K, B) -> scalar.

    ``margin``: ``relu(L_suff - L_task + m)``; ``diff``: ``L_suff - L_task``; ``kl``: ``KL(p_suff || p_task)`` summed
    over classes (needs task_logits (B, C) and suff_logits (K, B, C)). The reference code averages the KL over
    classes instead of summing, which only scales it by 1/C.
    """
    gap = suff_nll - task_nll.unsqueeze(0)  # (K, B)
    if criterion == "margin":
        per = F.relu(gap + margin)
    elif criterion == "diff":
        per = gap
    elif criterion == "kl":
        if task_logits is None or suff_logits is None:
            raise ValueError("the 'kl' sufficiency criterion needs task_logits and suff_logits")
        log_p_suff = F.log_softmax(suff_logits.float(), dim=-1)  # (K, B, C)
        log_p_task = F.log_softmax(task_logits.float(), dim=-1).unsqueeze(0)  # (1, B, C)
        per = (log_p_suff.exp() * (log_p_suff - log_p_task)).sum(-1)  # (K, B)
    else:
        raise ValueError(f"sufficiency criterion must be 'margin', 'diff' or 'kl', got {criterion!r}")
    return per.mean(), {"suff_gap": gap.detach().mean(), "suff_per_k": per.detach().mean(-1)}


def plausibility_loss(
    logits: Tensor, gold: Tensor, mask: Tensor, pos_weight: float | None = None,
    sum_over_processes: Callable[[Tensor], Tensor] | None = None, processes: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level BCE between extractor logits and human rationales over the ``mask`` tokens.

    ``pos_weight=None`` reweights the positive class by ``#negatives / #positives`` among the masked tokens of the
    batch (1 when there is no positive). The loss is the weighted BCE summed over masked tokens divided by their
    number; with no masked token it is 0 (still attached to the graph, so every parameter gets a gradient).
    logits, gold: (N, T); mask: (N, T) bool.

    Data parallel (``processes`` > 1, each holding a slice of the global batch): ``sum_over_processes`` sums the
    token counts over the processes (every process calls it once), so the positive weight and the normaliser are
    the global batch's, and each process returns ``processes * local sum / global count``: the mean over processes
    that the gradient averaging takes is then the one-process loss of the global batch, whatever the split.
    """
    mask = mask.bool()
    counts = torch.stack([mask.sum(), (gold.bool() & mask).sum()])  # (2,): masked tokens, positives among them
    if sum_over_processes is not None:
        counts = sum_over_processes(counts)
    n, positives = counts[0], counts[1]
    if pos_weight is None:
        weight = (n - positives).float() / positives.float() if positives > 0 else torch.ones((), device=logits.device)
    else:
        weight = torch.tensor(float(pos_weight), device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits.float(), gold.float(), pos_weight=weight, reduction="none")
    loss = (per * mask).sum() / n.clamp(min=1)
    if processes > 1:
        loss = loss * processes
    return loss, {"plaus_pos_weight": weight.detach(), "plaus_tokens": n.detach().float()}
