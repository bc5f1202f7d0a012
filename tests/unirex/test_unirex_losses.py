"""UNIREX losses, top-k binarisation, token deletion and attributions against hand values and captum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.backbones import build_encoder
from lightning_modules.unirex.loss import (
    comprehensiveness_loss,
    per_example_nll,
    plausibility_loss,
    rationale_inputs,
    sufficiency_loss,
    topk_counts,
    topk_masks,
)
from lightning_modules.unirex.networks import TaskModel, attention_scores, delete_tokens, gradient_attribution

pytestmark = pytest.mark.usefixtures("one_thread")
KS = [1, 5, 10, 20, 50]


def _candidates(n: int, width: int = 60) -> torch.Tensor:
    row = torch.zeros(width, dtype=torch.bool)
    row[1 : 1 + n] = True
    return row


def test_topk_counts_round_half_to_even_with_at_least_one():
    cand = torch.stack([_candidates(n) for n in (10, 30, 50, 3, 0)])
    counts = topk_counts(cand, KS)  # (K, N)
    # n * k / 100 -> round half to even -> at least 1 -> at most n
    expected = torch.tensor([
        # n=10: .1 .5 1 2 5 | n=30: .3 1.5 3 6 15 | n=50: .5 2.5 5 10 25 | n=3: .03 .15 .3 .6 1.5 | n=0
        [1, 1, 1, 1, 0],
        [1, 2, 2, 1, 0],
        [1, 3, 5, 1, 0],
        [2, 6, 10, 1, 0],
        [5, 15, 25, 2, 0],
    ])
    assert torch.equal(counts, expected)


def test_topk_masks_keep_cls_out_exclude_padding_and_break_ties_by_position():
    # position 0 is [CLS] (not a candidate), 6-7 padding; candidates 1..5; CLS and padding score highest
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.3, 0.2, 8.0, 7.0]])
    cand = torch.tensor([[False, True, True, True, True, True, False, False]])
    masks = topk_masks(scores, cand, [20, 40, 100])  # 5 candidates: 1, 2, 5 tokens
    assert masks[0, 0].nonzero().flatten().tolist() == [2]  # tie 2 vs 3 -> the earlier
    assert masks[1, 0].nonzero().flatten().tolist() == [2, 3]
    assert masks[2, 0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5]
    assert not masks[..., 0].any() and not masks[..., 6:].any()
    with pytest.raises(ValueError, match="percentages"):
        topk_masks(scores, cand, [0])


def test_rationale_inputs_keep_special_tokens_in_both():
    attn = torch.tensor([[1, 1, 1, 1, 1, 0]])
    cand = torch.tensor([[False, True, True, True, False, False]])  # [CLS] a b c [SEP] <pad>
    rat = torch.tensor([[False, False, True, False, False, False]])
    comp, suff = rationale_inputs(attn, cand, rat)
    assert comp.long().tolist() == [[1, 1, 0, 1, 1, 0]]
    assert suff.long().tolist() == [[1, 0, 1, 0, 1, 0]]


def test_comprehensiveness_margin_and_diff_by_hand():
    task = torch.tensor([0.5, 2.0])
    comp = torch.tensor([[1.0, 1.0], [3.0, 0.2]])
    loss, m = comprehensiveness_loss(task, comp, "margin", 1.0)
    # relu(0.5-1+1)=0.5, relu(2-1+1)=2, relu(0.5-3+1)=0, relu(2-0.2+1)=2.8
    assert loss.item() == pytest.approx((0.5 + 2.0 + 0.0 + 2.8) / 4)
    assert m["comp_per_k"].tolist() == pytest.approx([1.25, 1.4])
    diff, _ = comprehensiveness_loss(task, comp, "diff")
    assert diff.item() == pytest.approx((-0.5 + 1.0 - 2.5 + 1.8) / 4)


def test_sufficiency_margin_diff_and_kl_by_hand():
    task = torch.tensor([0.5, 2.0])
    suff = torch.tensor([[0.3, 2.5], [1.0, 1.5]])
    loss, _ = sufficiency_loss(task, suff, "margin", 0.1)
    # relu(0.3-0.5+0.1)=0, relu(2.5-2+0.1)=0.6, relu(1-0.5+0.1)=0.6, relu(1.5-2+0.1)=0
    assert loss.item() == pytest.approx(0.3)
    diff, _ = sufficiency_loss(task, suff, "diff")
    assert diff.item() == pytest.approx((-0.2 + 0.5 + 0.5 - 0.5) / 4)
    # KL(p_suff || p_task) with p_task = (1/4, 3/4), p_suff = (1/2, 1/2): 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3)
    task_logits = torch.tensor([[0.0, math.log(3.0)]])
    suff_logits = torch.zeros(1, 1, 2)
    kl, _ = sufficiency_loss(torch.zeros(1), torch.zeros(1, 1), "kl", task_logits=task_logits, suff_logits=suff_logits)
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    with pytest.raises(ValueError, match="kl"):
        sufficiency_loss(task, suff, "kl")


def test_plausibility_bce_with_batch_positive_weight_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0, 5.0]])
    gold = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])  # the last token does not count
    loss, m = plausibility_loss(logits, gold, mask)
    # 3 tokens, 1 positive -> pos_weight 2; -2 log sig(0) + softplus(2) + softplus(-1), over 3 tokens
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert m["plaus_pos_weight"].item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx((2 * math.log(2) + sp(2.0) + sp(-1.0)) / 3, rel=1e-6)
    fixed, _ = plausibility_loss(logits, gold, mask, pos_weight=1.0)
    assert fixed.item() == pytest.approx((math.log(2) + sp(2.0) + sp(-1.0)) / 3, rel=1e-6)
    leaf = logits.clone().requires_grad_(True)
    none, _ = plausibility_loss(leaf, gold, torch.zeros_like(mask))  # no token counts: 0, still differentiable
    none.backward()
    assert none.item() == 0.0 and torch.equal(leaf.grad, torch.zeros_like(leaf))



def test_plausibility_split_over_processes_averages_to_the_whole_batch():
    """Data parallel: each process holds some rows (here unequal numbers of tokens and positives); with the counts
    summed over processes, the mean of the per-process losses and of their gradients is the whole batch's."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g)
    gold = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]).float()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]).bool()
    whole_leaf = logits.clone().requires_grad_(True)
    whole, m = plausibility_loss(whole_leaf, gold, mask)
    whole.backward()
    parts = [slice(0, 1), slice(1, 4)]
    total = sum(torch.stack([mask[p].sum(), (gold[p].bool() & mask[p]).sum()]) for p in parts)
    leaf = logits.clone().requires_grad_(True)
    losses = []
    for p in parts:
        loss, mp = plausibility_loss(leaf[p], gold[p], mask[p], sum_over_processes=lambda _: total, processes=2)
        assert mp["plaus_pos_weight"].item() == pytest.approx(m["plaus_pos_weight"].item())
        losses.append(loss)
    mean = torch.stack(losses).mean()
    mean.backward()
    assert mean.item() == pytest.approx(whole.item(), rel=1e-6)
    torch.testing.assert_close(leaf.grad, whole_leaf.grad)
    alone, _ = plausibility_loss(logits[parts[0]], gold[parts[0]], mask[parts[0]])  # per-process counts: not it
    assert (alone.item() + plausibility_loss(logits[parts[1]], gold[parts[1]], mask[parts[1]])[0].item()) / 2 \
        != pytest.approx(whole.item(), rel=1e-3)

def test_per_example_nll_over_leading_dims():
    logits = torch.randn(3, 4, 5)
    labels = torch.tensor([0, 4, 2, 1])
    want = torch.stack([F.cross_entropy(logits[i], labels, reduction="none") for i in range(3)])
    assert torch.allclose(per_example_nll(logits, labels), want)


def test_delete_tokens_moves_kept_tokens_left_in_order():
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]])
    keep = torch.tensor([[True, False, True, False, True, False], [True, True, True, True, False, False]])
    out, mask, out_types = delete_tokens(ids, keep, pad_id=0, token_type_ids=types)
    assert out.tolist() == [[1, 6, 2, 0], [1, 8, 9, 2]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert out_types.tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]


@pytest.fixture(scope="module")
def task_model() -> TaskModel:
    model = TaskModel(build_encoder("tiny-bert", seed=0), num_outputs=3, dropout=0.0).eval()
    return model


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 400, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    return ids, mask, torch.tensor([0, 2, 1])


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_gradient_attribution_matches_captum(task_model, method):
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    ids, mask, target = _batch()
    embeds = task_model.embed(ids).detach()
    baseline = task_model.embed(torch.zeros_like(ids)).detach()

    def forward(e: torch.Tensor) -> torch.Tensor:
        return task_model(mask.repeat(e.shape[0] // 3, 1), inputs_embeds=e)[0]

    def score(e: torch.Tensor) -> torch.Tensor:
        return forward(e).gather(1, target.repeat(e.shape[0] // 3).unsqueeze(1)).squeeze(1)

    ours = gradient_attribution(score, embeds, method, baseline, steps=6)  # (N, T)
    if method == "saliency":
        ref = Saliency(forward).attribute(embeds, target=target, abs=True)
    elif method == "input_x_gradient":
        ref = InputXGradient(forward).attribute(embeds, target=target)
    else:
        ref = IntegratedGradients(forward).attribute(embeds, baselines=baseline, target=target, n_steps=6,
                                                     method="riemann_middle")
    assert ours.shape == (3, 9)
    assert torch.allclose(ours, ref.sum(-1), atol=1e-5, rtol=1e-4)


def test_integrated_gradients_completeness(task_model):
    """Sum of IG attributions ~ f(x) - f(baseline) with enough steps."""
    ids, mask, target = _batch()
    embeds = task_model.embed(ids).detach()
    baseline = torch.zeros_like(embeds)

    def score(e: torch.Tensor) -> torch.Tensor:
        out = task_model(mask.repeat(e.shape[0] // 3, 1), inputs_embeds=e)[0]
        return out.gather(1, target.repeat(e.shape[0] // 3).unsqueeze(1)).squeeze(1)

    attr = gradient_attribution(score, embeds, "integrated_gradients", baseline, steps=128)
    with torch.no_grad():
        gap = score(embeds) - score(baseline)
    assert torch.allclose(attr.sum(-1), gap, atol=2e-3 * gap.abs().max().item() + 1e-4)


def test_attention_scores_are_the_first_tokens_head_mean():
    attn = torch.rand(2, 4, 5, 5)  # (N, heads, T, T)
    other = torch.rand(2, 4, 5, 5)
    assert torch.allclose(attention_scores((other, attn)), attn[:, :, 0, :].mean(1))


def test_to_words_takes_each_words_best_subword_and_marks_absent_words():
    from lightning_modules.unirex.networks import to_words

    # [CLS] w0 w0 w1 w2 [SEP] <pad>; word 3 was cut off: absent
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, -1, -1], [-1, 0, 1, 1, 3, -1, -1]])
    scores = torch.tensor([[9.0, 0.5, 2.0, -1.0, 3.0, 8.0, 7.0], [9.0, -2.0, 1.0, 4.0, 0.0, 8.0, 7.0]])
    values, present = to_words(scores, word_ids)
    assert values.tolist() == [[2.0, -1.0, 3.0, 0.0], [-2.0, 4.0, 0.0, 0.0]]
    assert present.tolist() == [[True, True, True, False], [True, True, False, True]]
    hard = torch.tensor([[0, 1, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0]]).bool()
    assert to_words(hard, word_ids)[0].bool().tolist() == [[True, False, False, False], [False, True, False, False]]


def test_first_token_pooling_needs_a_cls_or_bos_token():
    from types import SimpleNamespace

    from core.heads import check_first_token_pooling

    bare = SimpleNamespace(cls_token_id=None, bos_token_id=None)
    with pytest.raises(ValueError, match="pooling='cls' reads the first token.*use pooling='mean'"):
        check_first_token_pooling(bare, "cls", "m", "pooling")
    check_first_token_pooling(bare, "mean", "m", "pooling")  # mean pooling needs no first token
    check_first_token_pooling(SimpleNamespace(cls_token_id=None, bos_token_id=1), "cls", "m", "pooling")
