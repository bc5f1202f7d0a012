"""Pooling and small heads shared by the encoder systems (prefixes, UNIREX, MSD).

:func:`pool` turns token states into one vector (first token or mean over real tokens);
:func:`check_first_token_pooling` refuses first-token pooling where position 0 is text; :func:`build_head` makes a
linear or one-hidden-layer MLP head; :func:`eval_metrics` the classification / regression metrics of a task.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef
from transformers import PreTrainedTokenizerBase

from core.errors import ConfigError

TaskType = Literal["classification", "regression"]


def build_head(kind: str, input_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Module:
    """``linear``: one affine map; ``mlp``: Linear -> GELU -> Dropout -> Linear (dropout only between layers)."""
    if kind == "linear":
        return nn.Linear(input_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
    raise ConfigError(f"head must be 'linear' or 'mlp', got {kind!r}")


def eval_metrics(task_type: TaskType, num_labels: int) -> MetricCollection:
    if task_type == "classification":
        return MetricCollection({
            "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes=num_labels, average="macro"),
        })
    return MetricCollection({"mse": MeanSquaredError(), "pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})


Pooling = Literal["cls", "mean"]


def pool(hidden: Tensor, attention_mask: Tensor, pooling: Pooling) -> Tensor:
    """(B, T, hidden) -> (B, hidden): the first token (``cls``; the raw state, not BERT's tanh pooler) or the mean
    over real text tokens (``mean``; padding excluded, and the prefix has no hidden states to exclude)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    raise ConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def check_first_token_pooling(tokenizer: PreTrainedTokenizerBase, pooling: str, model: str, option: str) -> None:
    """``cls`` pooling reads position 0, which must be a [CLS] or BOS token (never text that could be masked or cut):
    a :class:`ConfigError` naming ``option`` otherwise."""
    if pooling == "cls" and tokenizer.cls_token_id is None and tokenizer.bos_token_id is None:
        raise ConfigError(f"{option}='cls' reads the first token, but the tokenizer of {model!r} adds no [CLS] or "
                          f"BOS token: use {option}='mean'")
