"""MSD saliency, weighting schemes and the weighted objective against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from core.losses import kd_softmax
from lightning_modules.msd.loss import modality_saliency, msd_loss
from lightning_modules.msd.weighting import Dataset, Instance, Uniform, make_weighting

pytestmark = pytest.mark.usefixtures("one_thread")
LN3 = math.log(3.0)


def test_kl_saliency_by_hand():
    # full: p = (1/4, 3/4); image only: (1/2, 1/2); text only: p itself. Removing the image leaves the text-only
    # input, which predicts as the full one: saliency(image) = KL(p || p) = 0; saliency(text) = KL(p || (1/2, 1/2))
    # = 1/4 ln(1/2) + 3/4 ln(3/2).
    full = torch.tensor([[0.0, LN3]])
    only = torch.stack([torch.zeros(1, 2), full])  # (M=2, B=1, L=2): image only, text only
    s = modality_saliency(full, only, torch.tensor([1]), "kl")
    assert s.shape == (1, 2)
    assert s[0, 0].item() == pytest.approx(0.0, abs=1e-7)
    assert s[0, 1].item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)


def test_prob_drop_saliency_by_hand():
    full = torch.tensor([[0.0, LN3], [LN3, 0.0]])  # p(y=1) = 3/4 ; p(y=0) = 3/4
    image_only = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # 1/2 everywhere
    text_only = torch.tensor([[LN3, 0.0], [LN3, 0.0]])  # p(1) = 1/4 ; p(0) = 3/4
    s = modality_saliency(full, torch.stack([image_only, text_only]), torch.tensor([1, 0]), "prob_drop")
    # image: full - text only = (3/4 - 1/4, 3/4 - 3/4); text: full - image only = (3/4 - 1/2, 3/4 - 1/2)
    torch.testing.assert_close(s, torch.tensor([[0.5, 0.25], [0.0, 0.25]]), atol=1e-6, rtol=0)


def test_multi_label_saliencies_by_hand():
    full = torch.tensor([[0.0, 0.0]])  # sigmoid 1/2 for both labels
    image_only = torch.tensor([[LN3, 0.0]])  # label 0: 3/4
    text_only = torch.tensor([[0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0]])
    s = modality_saliency(full, torch.stack([image_only, text_only]), labels, "kl", multi_label=True)
    # image: KL(full || text only) = 0; text: KL(Bern(1/2) || Bern(3/4)) on label 0 = 1/2 ln(2/3) + 1/2 ln(2)
    torch.testing.assert_close(s, torch.tensor([[0.0, 0.5 * math.log(2 / 3) + 0.5 * math.log(2)]]), atol=1e-6,
                               rtol=0)
    d = modality_saliency(full, torch.stack([image_only, text_only]), labels, "prob_drop", multi_label=True)
    # true-value probabilities, mean over labels: full (1/2 + 1/2)/2; image only (3/4 + 1/2)/2 -> text: -1/8
    torch.testing.assert_close(d, torch.tensor([[0.0, -0.125]]), atol=1e-6, rtol=0)


def test_weighting_schemes_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert Uniform().weights(s).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    w = Dataset(mean=torch.tensor([0.3, 0.1])).weights(s)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5], [1.5, 0.5]]))  # 2 * 0.3 / 0.4, 2 * 0.1 / 0.4
    assert Dataset(mean=torch.tensor([-0.1, 0.0])).weights(s).tolist() == [[1.0, 1.0]] * 2
    w = Instance(temperature=0.5).weights(s)
    # 2 * softmax((2, 0)) = 2 e^2 / (e^2 + 1), 2 / (e^2 + 1); a row of equal saliencies: (1, 1)
    e2 = math.exp(2)
    torch.testing.assert_close(w, torch.tensor([[2 * e2 / (e2 + 1), 2 / (e2 + 1)], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="dataset"):
        Dataset().weights(s)  # no mean saliency yet
    with pytest.raises(ValueError, match="weighting must be one of"):
        make_weighting("median")


def test_msd_loss_adds_the_weighted_modality_terms():
    g = torch.Generator().manual_seed(0)
    s_full, t_full = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    s_only, t_only = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    labels = torch.tensor([0, 3, 1])
    weights = torch.tensor([[1.0, 0.0], [0.5, 1.5], [2.0, 0.0]])
    loss, parts = msd_loss(s_full, t_full, s_only, t_only, labels, weights, temperature=2.0, task_weight=0.5,
                           kd_weight=0.25)
    ce = torch.nn.functional.cross_entropy(s_full, labels)
    kd = kd_softmax(s_full, t_full, 2.0)[0]
    per = torch.stack([kd_softmax(s_only[m], t_only[m], 2.0, reduction="none")[0] for m in range(2)], -1)  # (B, M)
    want = 0.5 * ce + 0.25 * kd + (weights * per).sum(-1).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["kd_image"].item() == pytest.approx(per[:, 0].mean().item(), rel=1e-6)
    # a student equal to its teacher everywhere leaves only the task loss
    same, _ = msd_loss(t_full, t_full, t_only, t_only, labels, weights)
    assert same.item() == pytest.approx(torch.nn.functional.cross_entropy(t_full, labels).item(), rel=1e-6)
