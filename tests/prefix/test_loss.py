"""The prefix system's head loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.prefix.loss import head_loss


def test_classification_is_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p(class 0) = 1/2, then 3/4
    labels = torch.tensor([1, 0])
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert head_loss(logits, labels, "classification").item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_regression_is_mean_squared_error_by_hand(shape: tuple[int, ...]) -> None:
    scores = torch.tensor([1.0, 2.0, 4.0]).reshape(shape)
    labels = torch.tensor([1.0, 0.0, 1.0])
    assert head_loss(scores, labels, "regression").item() == pytest.approx((0 + 4 + 9) / 3)
