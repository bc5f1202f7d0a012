"""Rationale metrics of ERASER and UNIREX as torchmetrics: AOPC faithfulness, AUPRC, token F1 and IOU F1.

ERASER (DeYoung et al. 2020, ACL, "ERASER: A Benchmark to Evaluate Rationalized NLP Models") defines them;
UNIREX (Chan et al. 2022, ICML, "UNIREX: A Unified Learning Framework for Language Model Rationale Extraction")
reports them (faithfulness: comprehensiveness / sufficiency AOPC; plausibility: AUPRC, token F1, IOU F1).

Conventions of every token metric: tensors are (N, T); ``mask`` (N, T) bool marks the tokens that count (candidate
rationale tokens: real, non-special document tokens); ``gold`` (N, T) is 0/1. Only rows with at least one gold
positive inside the mask are scored; the others are counted in the ``skipped`` state and otherwise ignored.

Every state is a sum (per-instance averages are kept as a sum and a count) with ``dist_reduce_fx="sum"``, so the
value under DDP equals the one over all rows at once; sums are float64. ``compute`` returns a float32 scalar, and
0.0 when nothing was scored. The math is plain torch (no sklearn at run time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from core.heads import eval_metrics

AOPCNormalisation = Literal["eraser", "unirex"]


# ----------------------------------------------------------------------------------------------------- helpers


def _binary(x: Tensor, name: str) -> Tensor:
    """``x`` as a bool tensor; a non-bool tensor must hold only 0 and 1."""
    if x.dtype == torch.bool:
        return x
    if x.is_complex() or bool(((x != 0) & (x != 1)).any()):
        raise ValueError(f"{name} must be bool or hold only 0/1 values")
    return x != 0


def _token_inputs(name: str, values: Tensor, gold: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Check (N, T) shapes; returns gold-in-mask and mask as bool (N, T)."""
    if values.ndim != 2 or values.shape != gold.shape or values.shape != mask.shape:
        raise ValueError(
            f"{name}, gold and mask must all have shape (N, T), got {tuple(values.shape)}, {tuple(gold.shape)} "
            f"and {tuple(mask.shape)}"
        )
    mask = _binary(mask.detach(), "mask")
    return _binary(gold.detach(), "gold") & mask, mask


def _run_starts(x: Tensor) -> Tensor:
    """(N, T) bool: True at the first position of each maximal run of True along each row of ``x`` (N, T)."""
    before = torch.zeros_like(x[:, :1])  # (N, 1) False: a run never continues across rows
    return x & ~torch.cat([before, x[:, :-1]], dim=1)


def row_auprc(scores: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """Area under the precision-recall curve of each row over its masked tokens, as ERASER computes it.

    ERASER takes sklearn's ``auc(recall, precision)`` of ``precision_recall_curve(gold, scores)``: one point per
    distinct score (a threshold; tied tokens enter together) with precision ``tp / (tp + fp)`` and recall
    ``tp / P``, plus the point (recall 0, precision 1), joined by trapezoids. Rows without a positive get 0.
    scores: (N, T) float, finite inside the mask; gold, mask: (N, T) bool (gold already inside the mask) -> (N,)
    float64.
    """
    n, t = scores.shape
    if t == 0:
        return scores.new_zeros(n, dtype=torch.float64)
    s = scores.detach().to(torch.float64)  # (N, T)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices  # (N, T) by score
    valid_first = torch.sort(mask.gather(1, order).to(torch.int8), dim=1, descending=True, stable=True).indices
    order = order.gather(1, valid_first)  # (N, T) masked tokens first, by descending score
    s, valid = s.gather(1, order), mask.gather(1, order)  # (N, T)
    pos = gold.gather(1, order).to(torch.float64)  # (N, T)
    tps = pos.cumsum(1)  # (N, T)
    fps = (valid.to(torch.float64) - pos).cumsum(1)  # (N, T)
    tied_next = torch.cat([(s[:, :-1] == s[:, 1:]) & valid[:, 1:], valid.new_zeros(n, 1)], dim=1)  # (N, T)
    end = valid & ~tied_next  # (N, T) last token of each distinct score: a curve point
    precision = tps / (tps + fps).clamp(min=1.0)  # (N, T)
    recall = tps / tps[:, -1:].clamp(min=1.0)  # (N, T)
    # The curve point before each point: the previous `end` of the row, or (recall 0, precision 1) at the start.
    idx = torch.arange(t, device=s.device).expand(n, t)  # (N, T)
    last_end = torch.where(end, idx, -1).cummax(dim=1).values  # (N, T)
    prev = torch.cat([last_end.new_full((n, 1), -1), last_end[:, :-1]], dim=1)  # (N, T)
    has_prev = prev >= 0
    prev = prev.clamp(min=0)
    r_prev = torch.where(has_prev, recall.gather(1, prev), 0.0)  # (N, T)
    p_prev = torch.where(has_prev, precision.gather(1, prev), 1.0)  # (N, T)
    area = (recall - r_prev) * (precision + p_prev) / 2  # (N, T)
    return torch.where(end, area, 0.0).sum(1)


def _ratio(value: Tensor, count: Tensor) -> Tensor:
    """``value / count`` (float64), 0.0 when ``count`` is 0."""
    return torch.where(count > 0, value / count.clamp(min=1), 0.0)


def _synced(metric: Metric, fn: Callable[[], Tensor]) -> Tensor:
    """``fn()`` on ``metric``'s states summed over processes, as ``compute`` sees them; no sync outside DDP."""
    with metric.sync_context(should_sync=not metric._is_synced, should_unsync=not metric._is_synced):
        return fn()


class _RowMetric(Metric):
    """Shared states of the plausibility metrics: rows scored and rows skipped (no gold positive in the mask)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    scored: Tensor
    skipped: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scored", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _sum_state(self, name: str) -> None:
        self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _count_rows(self, gold: Tensor) -> Tensor:
        """(N,) bool rows with a gold positive in the mask; adds them to ``scored`` and the rest to ``skipped``."""
        keep = gold.any(1)  # (N,)
        n_keep = keep.sum()
        self.scored += n_keep.to(self.scored.device)
        self.skipped += (keep.numel() - n_keep).to(self.skipped.device)
        return keep


# ----------------------------------------------------------------------------------------------------- metrics


class AOPC(Metric):
    """Area over the perturbation curve of comprehensiveness or sufficiency (ERASER; reported by UNIREX).

    ``update(full_prob (N,), bin_probs (K, N))``: the probability of the predicted class on the full input and, for
    each of the K bins (top-k% rationale tokens), the same class's probability with the rationale removed
    (comprehensiveness, higher is better) or kept alone (sufficiency, lower is better). The mean drop of bin k is
    ``d_k = mean_i(full_prob_i - bin_probs_{k,i})`` (:meth:`per_bin`).

    - ``"eraser"``: ``(1/K) sum_k d_k``, the mean over the bins (ERASER's code);
    - ``"unirex"``: ``sum_k d_k / (K + 1)``, as the UNIREX reference code divides by bins + 1 (a k=0 bin of zero
      drop counted in), i.e. ``unirex = eraser * K / (K + 1)``.

    ``compute`` is 0.0 before any example was seen.
    """

    is_differentiable = False
    higher_is_better: bool | None = None  # comprehensiveness: higher; sufficiency: lower
    full_state_update = False
    drop_sum: Tensor
    count: Tensor

    def __init__(self, num_bins: int, normalisation: AOPCNormalisation = "eraser", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
        if normalisation not in ("eraser", "unirex"):
            raise ValueError(f"normalisation must be 'eraser' or 'unirex', got {normalisation!r}")
        self.num_bins = num_bins
        self.normalisation = normalisation
        self.add_state("drop_sum", default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, full_prob: Tensor, bin_probs: Tensor) -> None:
        """Add a batch: ``full_prob`` (N,), ``bin_probs`` (K, N)."""
        if full_prob.ndim != 1 or bin_probs.shape != (self.num_bins, full_prob.shape[0]):
            raise ValueError(
                f"full_prob must have shape (N,) and bin_probs ({self.num_bins}, N), got {tuple(full_prob.shape)} "
                f"and {tuple(bin_probs.shape)}"
            )
        drop = full_prob.detach().to(torch.float64).unsqueeze(0) - bin_probs.detach().to(torch.float64)  # (K, N)
        self.drop_sum += drop.sum(1).to(self.drop_sum.device)
        self.count += full_prob.shape[0]

    def _per_bin(self) -> Tensor:
        return torch.where(self.count > 0, self.drop_sum / self.count.clamp(min=1), 0.0)  # (K,)

    def per_bin(self) -> Tensor:
        """(K,) float32 mean drop ``d_k`` of each bin, over all processes; zeros before any example."""
        return _synced(self, self._per_bin).float()

    def compute(self) -> Tensor:
        denominator = self.num_bins + (1 if self.normalisation == "unirex" else 0)
        return (self._per_bin().sum() / denominator).float()


class RationaleAUPRC(_RowMetric):
    """Mean over scored rows of the area under the precision-recall curve of token scores vs gold (ERASER).

    Per row, over its masked tokens, sklearn's ``auc(recall, precision)`` of ``precision_recall_curve(gold,
    scores)`` (see :func:`row_auprc`; tied tokens enter the curve together, one threshold per distinct score).
    """

    auprc_sum: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sum_state("auprc_sum")

    def update(self, scores: Tensor, gold: Tensor, mask: Tensor) -> None:
        """Add a batch: ``scores`` (N, T) float (finite inside the mask), ``gold`` (N, T) 0/1, ``mask`` (N, T)."""
        gold, mask = _token_inputs("scores", scores, gold, mask)
        if not scores.is_floating_point():
            raise ValueError(f"scores must be a float tensor, got {scores.dtype}")
        keep = self._count_rows(gold)  # (N,)
        if not bool(keep.any()):
            return
        scores, gold, mask = scores[keep], gold[keep], mask[keep]  # (n, T)
        if not bool(torch.isfinite(scores[mask]).all()):
            raise ValueError("scores must be finite on masked tokens")
        self.auprc_sum += row_auprc(scores, gold, mask).sum().to(self.auprc_sum.device)

    def compute(self) -> Tensor:
        return _ratio(self.auprc_sum, self.scored).float()


class TokenF1(_RowMetric):
    """ERASER's instance-macro token F1 of the positive class of hard rationales, over scored rows.

    Per row (masked tokens only): ``p = |pred & gold| / |pred|`` (0 without predictions), ``r = |pred & gold| /
    |gold|``, ``f1 = 2pr / (p + r)`` (0 when p or r is 0). ``compute`` is the mean f1; :meth:`precision` and
    :meth:`recall` are the means of p and r.
    """

    f1_sum: Tensor
    precision_sum: Tensor
    recall_sum: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("f1_sum", "precision_sum", "recall_sum"):
            self._sum_state(name)

    def update(self, pred: Tensor, gold: Tensor, mask: Tensor) -> None:
        """Add a batch: ``pred`` (N, T) bool (or 0/1), ``gold`` (N, T) 0/1, ``mask`` (N, T)."""
        gold, mask = _token_inputs("pred", pred, gold, mask)
        pred = _binary(pred.detach(), "pred") & mask
        keep = self._count_rows(gold)  # (N,)
        pred, gold = pred[keep], gold[keep]  # (n, T)
        tp = (pred & gold).sum(1).to(torch.float64)  # (n,)
        n_pred = pred.sum(1)  # (n,)
        p = torch.where(n_pred > 0, tp / n_pred.clamp(min=1), 0.0)  # (n,)
        r = tp / gold.sum(1).clamp(min=1)  # (n,)
        f1 = torch.where((p > 0) & (r > 0), 2 * p * r / (p + r).clamp(min=1e-300), 0.0)  # (n,)
        self.f1_sum += f1.sum().to(self.f1_sum.device)
        self.precision_sum += p.sum().to(self.precision_sum.device)
        self.recall_sum += r.sum().to(self.recall_sum.device)

    def compute(self) -> Tensor:
        return _ratio(self.f1_sum, self.scored).float()

    def precision(self) -> Tensor:
        """Mean token precision over scored rows (all processes); 0.0 when nothing was scored."""
        return _synced(self, lambda: _ratio(self.precision_sum, self.scored).float())

    def recall(self) -> Tensor:
        """Mean token recall over scored rows (all processes); 0.0 when nothing was scored."""
        return _synced(self, lambda: _ratio(self.recall_sum, self.scored).float())


class IOUF1(_RowMetric):
    """ERASER's partial-match (IOU) F1 of rationale spans, macro version.

    Spans are maximal runs of consecutive True positions of a row inside the mask (an unmasked position ends a run
    and belongs to no span). A predicted span is a true positive when its IOU (over token index sets) with the
    best-overlapping gold span is >= ``threshold``. Per scored row: ``precision_i = tp_i / #pred spans`` (rows with
    a predicted span) and ``recall_i = tp_i / #gold spans``; ``macro_p`` and ``macro_r`` average them over those
    rows, and ``compute`` is ``2 macro_p macro_r / (macro_p + macro_r)`` (0 when either is 0). With a threshold
    below 0.5 several predicted spans may match one gold span, so ``recall_i`` may exceed 1, as in ERASER.
    """

    precision_sum: Tensor
    precision_count: Tensor
    recall_sum: Tensor

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self._sum_state("precision_sum")
        self._sum_state("recall_sum")
        self.add_state("precision_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # recall_i is defined on every scored row: its count is `scored`.

    def update(self, pred: Tensor, gold: Tensor, mask: Tensor) -> None:
        """Add a batch: ``pred`` (N, T) bool (or 0/1), ``gold`` (N, T) 0/1, ``mask`` (N, T)."""
        gold, mask = _token_inputs("pred", pred, gold, mask)
        pred = _binary(pred.detach(), "pred") & mask
        keep = self._count_rows(gold)  # (N,)
        pred, gold = pred[keep], gold[keep]  # (n, T)
        n, t = pred.shape
        if n == 0 or t == 0:
            return
        starts_p, starts_g, both = _run_starts(pred), _run_starts(gold), pred & gold  # (n, T)
        starts_o = _run_starts(both)  # (n, T) each run of `both` is the overlap of exactly one (pred, gold) span pair
        # Global span ids (row-major) at every position; only read where the position is in such a span.
        pid = starts_p.flatten().cumsum(0) - 1  # (n*T,)
        gid = starts_g.flatten().cumsum(0) - 1  # (n*T,)
        oid = starts_o.flatten().cumsum(0) - 1  # (n*T,)
        n_p, n_g, n_o = int(pid[-1]) + 1, int(gid[-1]) + 1, int(oid[-1]) + 1
        len_p = torch.bincount(pid[pred.flatten()], minlength=n_p)  # (n_p,) tokens of each predicted span
        len_g = torch.bincount(gid[gold.flatten()], minlength=n_g)  # (n_g,)
        inter = torch.bincount(oid[both.flatten()], minlength=n_o).to(torch.float64)  # (n_o,)
        o_p, o_g = pid[starts_o.flatten()], gid[starts_o.flatten()]  # (n_o,) the span pair of each overlap
        iou = inter / (len_p[o_p] + len_g[o_g] - inter)  # (n_o,)
        best = iou.new_zeros(n_p).scatter_reduce_(0, o_p, iou, reduce="amax")  # (n_p,) 0 without overlap
        row = torch.arange(n, device=pred.device).unsqueeze(1).expand(n, t).flatten()[starts_p.flatten()]  # (n_p,)
        tp = iou.new_zeros(n).index_add_(0, row, (best >= self.threshold).to(torch.float64))  # (n,)
        spans_p, spans_g = starts_p.sum(1), starts_g.sum(1)  # (n,), spans_g >= 1 on scored rows
        has_pred = spans_p > 0
        self.precision_sum += (tp / spans_p.clamp(min=1))[has_pred].sum().to(self.precision_sum.device)
        self.precision_count += has_pred.sum().to(self.precision_count.device)
        self.recall_sum += (tp / spans_g).sum().to(self.recall_sum.device)

    def _f1(self) -> Tensor:
        p = _ratio(self.precision_sum, self.precision_count)
        r = _ratio(self.recall_sum, self.scored)
        return torch.where((p > 0) & (r > 0), 2 * p * r / (p + r).clamp(min=1e-300), 0.0).float()

    def compute(self) -> Tensor:
        return self._f1()

    def precision(self) -> Tensor:
        """Macro precision over scored rows with a predicted span (all processes); 0.0 when there is none."""
        return _synced(self, lambda: _ratio(self.precision_sum, self.precision_count).float())

    def recall(self) -> Tensor:
        """Macro recall over scored rows (all processes); 0.0 when nothing was scored."""
        return _synced(self, lambda: _ratio(self.recall_sum, self.scored).float())


class RationaleMetrics(nn.Module):
    """Task (accuracy, macro F1), faithfulness (AOPC) and plausibility metrics of one evaluation split (UNIREX)."""

    def __init__(self, num_labels: int, num_bins: int, normalisation: str) -> None:
        super().__init__()
        self.task = eval_metrics("classification", num_labels)
        self.comp_aopc = AOPC(num_bins, normalisation)
        self.suff_aopc = AOPC(num_bins, normalisation)
        self.auprc, self.token_f1, self.iou_f1 = RationaleAUPRC(), TokenF1(), IOUF1(0.5)

    def compute(self) -> dict[str, Tensor]:
        out = {k: v for k, v in self.task.compute().items()}
        for name in ("comp_aopc", "suff_aopc", "auprc", "token_f1", "iou_f1"):
            out[name] = getattr(self, name).compute()
        return out

    def per_bin(self, ks: list[float]) -> dict[str, float]:
        """The mean probability drop of each k bin: ``comp_aopc/k=5`` -> value."""
        return {f"{name}/k={k:g}": float(v) for name in ("comp_aopc", "suff_aopc")
                for k, v in zip(ks, getattr(self, name).per_bin().tolist(), strict=True)}

    def reset(self) -> None:
        for m in self.children():
            m.reset()
