"""Rationale metrics (ERASER / UNIREX) against sklearn, hand-worked values and an independent ERASER partial match."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, precision_recall_curve, precision_recall_fscore_support
from torch import Tensor

from lightning_modules.unirex.metrics import AOPC, IOUF1, RationaleAUPRC, TokenF1, row_auprc

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_batch(n: int = 60, t: int = 14, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scores with many ties (5 levels), gold, pred, mask (N, T); some rows end up without gold in the mask."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (n, t), generator=g).double() / 4  # (N, T)
    gold = torch.rand(n, t, generator=g) < 0.3
    pred = torch.rand(n, t, generator=g) < 0.4
    mask = torch.rand(n, t, generator=g) < 0.8
    return scores, gold, pred, mask


# ------------------------------------------------------------------------------------------- hand-worked data

# Rows of 10 tokens (1 = True). Row 1's mask drops position 4; row 2 has no gold (skipped); row 3 predicts nothing.
HAND_GOLD = torch.tensor([
    [0, 0, 1, 1, 1, 1, 0, 0, 1, 1],
    [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
])
HAND_PRED = torch.tensor([
    [0, 0, 0, 1, 1, 1, 0, 1, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
]).bool()
HAND_MASK = torch.ones(4, 10, dtype=torch.bool)
HAND_MASK[1, 4] = False


def test_iou_f1_hand_worked() -> None:
    # row 0: gold spans {2..5}, {8,9}; pred spans {3,4,5}, {7}.
    #        {3,4,5} vs {2..5}: IOU 3/4 = 0.75 >= 0.5 -> tp; {7} overlaps nothing -> IOU 0. tp=1: p=1/2, r=1/2.
    # row 1: position 4 masked out: gold spans {2,3}, {5}; pred spans {1,2,3}, {5,6}.
    #        {1,2,3} vs {2,3}: 2/3 -> tp; {5,6} vs {5}: 1/2 = 0.5 -> tp. tp=2: p=2/2=1, r=2/2=1.
    # row 2: no gold -> skipped (its prediction is ignored).
    # row 3: gold {0,1}, no pred span: no precision term; r = 0/1 = 0.
    # macro_p = (1/2 + 1)/2 = 0.75; macro_r = (1/2 + 1 + 0)/3 = 0.5; F1 = 2 * 0.75 * 0.5 / 1.25 = 0.6.
    m = IOUF1()
    m.update(HAND_PRED, HAND_GOLD, HAND_MASK)
    assert m.compute().item() == pytest.approx(0.6)
    assert m.precision().item() == pytest.approx(0.75)
    assert m.recall().item() == pytest.approx(0.5)
    assert (m.scored.item(), m.skipped.item(), m.precision_count.item()) == (3, 1, 2)
    strict = IOUF1(threshold=0.7)  # row 1's {5,6} (0.5) and {1,2,3} (0.667) now miss; row 0's 0.75 still counts
    strict.update(HAND_PRED, HAND_GOLD, HAND_MASK)
    # macro_p = (1/2 + 0)/2 = 0.25; macro_r = (1/2 + 0 + 0)/3 = 1/6; F1 = 2 * 0.25 * (1/6) / (0.25 + 1/6) = 0.2
    assert strict.compute().item() == pytest.approx(0.2)


def test_token_f1_hand_worked() -> None:
    # row 0: pred {3,4,5,7}, gold {2,3,4,5,8,9}: tp 3, p = 3/4, r = 3/6, f1 = 2 * .375 / 1.25 = 0.6
    # row 1 (4 masked): pred {1,2,3,5,6}, gold {2,3,5}: tp 3, p = 3/5, r = 1, f1 = 1.2 / 1.6 = 0.75
    # row 3: no pred: p = r = f1 = 0. Means over the 3 scored rows: f1 0.45, p 0.45, r 0.5.
    m = TokenF1()
    m.update(HAND_PRED, HAND_GOLD, HAND_MASK)
    assert m.compute().item() == pytest.approx(0.45)
    assert m.precision().item() == pytest.approx(0.45)
    assert m.recall().item() == pytest.approx(0.5)
    assert (m.scored.item(), m.skipped.item()) == (3, 1)


def test_token_f1_matches_sklearn_per_row() -> None:
    _, gold, pred, mask = _random_batch()
    expected = {"f1": [], "p": [], "r": []}
    for i in range(gold.shape[0]):
        y, yhat = (gold[i] & mask[i])[mask[i]].numpy(), pred[i][mask[i]].numpy()
        if not y.any():
            continue
        p, r, f1, _ = precision_recall_fscore_support(y, yhat, average="binary", zero_division=0)
        expected["f1"].append(f1)
        expected["p"].append(p)
        expected["r"].append(r)
    m = TokenF1()
    m.update(pred, gold.long(), mask)
    assert m.scored.item() == len(expected["f1"]) and m.skipped.item() == gold.shape[0] - len(expected["f1"])
    assert m.compute().item() == pytest.approx(np.mean(expected["f1"]), abs=1e-6)
    assert m.precision().item() == pytest.approx(np.mean(expected["p"]), abs=1e-6)
    assert m.recall().item() == pytest.approx(np.mean(expected["r"]), abs=1e-6)


# ----------------------------------------------------------------------------------------------------- AUPRC


def _sklearn_auprc(scores: Tensor, gold: Tensor, mask: Tensor) -> list[float]:
    """ERASER's AUPRC per scored row: sklearn precision_recall_curve then auc, over the masked tokens."""
    out = []
    for i in range(scores.shape[0]):
        y, s = (gold[i] & mask[i])[mask[i]].numpy(), scores[i][mask[i]].numpy()
        if y.any():
            precision, recall, _ = precision_recall_curve(y, s)
            out.append(auc(recall, precision))
    return out


def test_auprc_ties_hand_worked_and_sklearn() -> None:
    # Thresholds at the distinct scores 0.9 (two tied tokens), 0.5, 0.1:
    #   0.9: tp 1 fp 1 -> (r .5, p .5); 0.5: tp 2 fp 1 -> (r 1, p 2/3); 0.1: tp 2 fp 2 -> (r 1, p .5)
    #   area from (r 0, p 1): .5 * (1 + .5)/2 + .5 * (.5 + 2/3)/2 + 0 = 0.375 + 0.291666... = 0.6666...
    scores = torch.tensor([[0.9, 0.9, 0.5, 0.1]])
    gold = torch.tensor([[1, 0, 1, 0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    m = RationaleAUPRC()
    m.update(scores, gold, mask)
    assert m.compute().item() == pytest.approx(2 / 3)
    assert _sklearn_auprc(scores, gold.bool(), mask)[0] == pytest.approx(2 / 3)


def test_auprc_matches_sklearn_per_row_with_ties_and_masks() -> None:
    scores, gold, _, mask = _random_batch(n=80, t=16, seed=3)
    expected = _sklearn_auprc(scores, gold, mask)
    rows = (gold & mask).any(1)
    got = row_auprc(scores[rows], (gold & mask)[rows], mask[rows])
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    m = RationaleAUPRC()
    m.update(scores.float(), gold, mask)
    assert m.compute().item() == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert m.skipped.item() == int((~rows).sum())


def test_auprc_ignores_tokens_outside_the_mask() -> None:
    scores, gold, _, mask = _random_batch(seed=5)
    m1, m2 = RationaleAUPRC(), RationaleAUPRC()
    m1.update(scores, gold, mask)
    noisy = torch.where(mask, scores, torch.full_like(scores, 9.0))  # outside tokens: top score, all gold
    m2.update(noisy, gold | ~mask, mask)
    assert m1.compute().item() == m2.compute().item()
    with pytest.raises(ValueError, match="finite"):
        RationaleAUPRC().update(torch.tensor([[float("nan"), 0.2]]), torch.tensor([[1, 0]]), torch.ones(1, 2).bool())
    RationaleAUPRC().update(torch.tensor([[float("nan"), 0.2]]), torch.tensor([[0, 1]]), torch.tensor([[0, 1]]).bool())


# ------------------------------------------------------------------------------------------------------- IOU


def _spans(bits: list[bool]) -> list[set[int]]:
    spans: list[set[int]] = []
    for i, b in enumerate(bits):
        if b and i > 0 and bits[i - 1]:
            spans[-1].add(i)
        elif b:
            spans.append({i})
    return spans


def _eraser_partial_match(pred: Tensor, gold: Tensor, mask: Tensor, threshold: float) -> tuple[float, float, float]:
    """Independent macro IOU F1: sets of token indices, best IOU of each predicted span, plain Python."""
    precisions, recalls = [], []
    for p_row, g_row, m_row in zip(pred.tolist(), gold.tolist(), mask.tolist(), strict=True):
        g_spans = _spans([bool(g and m) for g, m in zip(g_row, m_row, strict=True)])
        if not g_spans:
            continue
        p_spans = _spans([bool(p and m) for p, m in zip(p_row, m_row, strict=True)])
        tp = sum(max(len(p & g) / len(p | g) for g in g_spans) >= threshold for p in p_spans)
        if p_spans:
            precisions.append(tp / len(p_spans))
        recalls.append(tp / len(g_spans))
    p = sum(precisions) / len(precisions) if precisions else 0.0
    r = sum(recalls) / len(recalls) if recalls else 0.0
    return (2 * p * r / (p + r) if p and r else 0.0), p, r


@pytest.mark.parametrize("threshold", [0.5, 0.3, 1.0])
def test_iou_f1_matches_independent_partial_match(threshold: float) -> None:
    for seed in range(4):
        _, gold, pred, mask = _random_batch(n=50, t=20, seed=seed)
        m = IOUF1(threshold)
        m.update(pred, gold, mask)
        f1, p, r = _eraser_partial_match(pred, gold, mask, threshold)
        assert m.compute().item() == pytest.approx(f1, abs=1e-6)
        assert m.precision().item() == pytest.approx(p, abs=1e-6)
        assert m.recall().item() == pytest.approx(r, abs=1e-6)


def test_iou_forward_gives_the_batch_value() -> None:
    m = IOUF1()
    batch = m(HAND_PRED, HAND_GOLD, HAND_MASK)
    assert batch.item() == pytest.approx(0.6)
    assert m.compute().item() == pytest.approx(0.6)


# ------------------------------------------------------------------------------------------------------ AOPC


def test_aopc_both_normalisations_by_hand() -> None:
    full = torch.tensor([0.9, 0.6])
    bins = torch.tensor([[0.5, 0.4], [0.7, 0.6]])  # (K=2, N=2)
    # drops: bin 0 [0.4, 0.2] -> d_0 = 0.3; bin 1 [0.2, 0.0] -> d_1 = 0.1
    # eraser = (0.3 + 0.1) / 2 = 0.2; unirex = (0.3 + 0.1) / 3 = 0.1333... = 0.2 * 2/3
    eraser, unirex = AOPC(2), AOPC(2, "unirex")
    for m in (eraser, unirex):
        m.update(full, bins)
    assert eraser.compute().item() == pytest.approx(0.2)
    assert unirex.compute().item() == pytest.approx(0.4 / 3)
    torch.testing.assert_close(eraser.per_bin(), torch.tensor([0.3, 0.1]))
    with pytest.raises(ValueError, match="bin_probs"):
        eraser.update(full, bins[:1])
    with pytest.raises(ValueError, match="normalisation"):
        AOPC(2, "mean")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- DDP proxy and edges


def _metrics() -> dict[str, Callable[[], object]]:
    return {"auprc": RationaleAUPRC, "token_f1": TokenF1, "iou_f1": IOUF1}


@pytest.mark.parametrize("name", ["auprc", "token_f1", "iou_f1", "aopc"])
def test_merged_halves_equal_one_pass(name: str) -> None:
    """Two instances on unequal halves, merged, give the one-instance value (fails if a metric averaged per batch)."""
    scores, gold, pred, mask = _random_batch(n=47, t=15, seed=11)
    if name == "aopc":
        g = torch.Generator().manual_seed(1)
        full, bins = torch.rand(47, generator=g).double(), torch.rand(5, 47, generator=g).double()
        make, args = (lambda: AOPC(5, "unirex")), (full, bins)
        first, rest = (full[:9], bins[:, :9]), (full[9:], bins[:, 9:])
    else:
        make = _metrics()[name]
        args = (scores if name == "auprc" else pred, gold, mask)
        first, rest = tuple(a[:9] for a in args), tuple(a[9:] for a in args)
    whole, m1, m2 = make(), make(), make()
    whole.update(*args)
    m1.update(*first)
    m2.update(*rest)
    per_batch_mean = (m1.clone().compute() + m2.clone().compute()) / 2  # clones: merge_state keeps a cached compute
    m1.merge_state(m2)
    for state in whole._defaults:
        torch.testing.assert_close(getattr(m1, state), getattr(whole, state), rtol=0, atol=1e-12)
    assert m1.compute().item() == whole.compute().item()
    assert per_batch_mean.item() != pytest.approx(whole.compute().item(), abs=1e-4)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
@pytest.mark.parametrize("name", ["auprc", "token_f1", "iou_f1"])
def test_empty_updates_and_rows_without_gold(name: str) -> None:
    m = _metrics()[name]()
    assert m.compute().item() == 0.0  # nothing scored
    for t in (0, 6):
        m.update(torch.zeros(0, t), torch.zeros(0, t), torch.zeros(0, t, dtype=torch.bool))
        m.update(torch.zeros(3, t), torch.zeros(3, t), torch.ones(3, t, dtype=torch.bool))
    gold = torch.tensor([[1, 0, 0, 1]])
    m.update(torch.ones(1, 4), gold, torch.tensor([[False, True, True, False]]))  # gold only outside the mask
    assert (m.scored.item(), m.skipped.item()) == (0, 7)
    assert m.compute().item() == 0.0
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        m.update(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 3).bool())
    with pytest.raises(ValueError, match="gold"):
        m.update(torch.ones(1, 2), torch.tensor([[2, 0]]), torch.ones(1, 2).bool())


def test_aopc_empty() -> None:
    m = AOPC(3)
    m.update(torch.zeros(0), torch.zeros(3, 0))
    assert m.compute().item() == 0.0
    assert m.per_bin().tolist() == [0.0, 0.0, 0.0]
