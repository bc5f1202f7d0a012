"""The prefix system's loss: a head's task loss on prefixed or fixed text representations.

Huang et al. 2023 ("Learning Easily Updated General Purpose Text Representations with Adaptable Task-Specific
Prefixes") train each source-task prefix, the multi-task baseline and the downstream heads with the task's own loss:
cross-entropy over the classes for classification, mean squared error for a regression score (one output).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from core.heads import TaskType


def head_loss(out: Tensor, labels: Tensor, task_type: TaskType) -> Tensor:
    """``out``: class logits (B, C), or scores (B,) / (B, 1) for regression; ``labels`` (B,) -> the mean loss ()."""
    if task_type == "regression":
        return F.mse_loss(out.reshape(labels.shape), labels.to(out.dtype))
    return F.cross_entropy(out, labels.long())
