"""DownstreamHead: a light model (linear or one-hidden-layer MLP) trained on fixed text representations.

Huang et al. 2023 keep the text representation fixed (a frozen LM's representations under every source-task
prefix, combined) and train only a lightweight model per unseen target task on it; the head here reads batches of
:class:`~datamodules.representations.RepresentationDataModule` (``x`` (B, D), ``labels`` (B,)). The head's kind
(linear or MLP) is one of the paper's open choices; ours defaults to linear.

``input_dim``, ``num_labels`` and ``task_type`` may be left None: they are then read from the datamodule when the
trainer builds the model (``configure_model``), and written into the hyperparameters, so a checkpoint rebuilds the
head by itself (``DownstreamHead.load_from_checkpoint``). Losses: cross-entropy (classification), MSE
(regression). Metrics, logged as ``val/...`` and ``test/...``: ``accuracy`` and ``f1_macro``, or ``mse``,
``pearson`` and ``spearman``; plus ``loss`` (example-weighted over the epoch).
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from core.errors import ConfigError
from core.heads import TaskType, build_head, eval_metrics
from core.optim import OptimSpec, configure_adamw
from lightning_modules.prefix.loss import head_loss


class DownstreamHead(LightningModule):
    """A linear or MLP head on fixed representations (classification or regression).

    Args:
        head: ``linear`` or ``mlp``.
        hidden, dropout: the MLP's hidden width and the dropout after its activation.
        num_labels, input_dim, task_type: None = taken from the datamodule (``num_labels``, ``input_dim``,
            ``task_type``) when the model is built; without a datamodule, ``num_labels == 1`` means regression.
        lr, weight_decay, warmup_steps, lr_schedule: AdamW and its schedule (``core/optim.py``).
    """

    # A few small layers on fixed feature vectors: no transformer, nothing for FSDP2 to shard (core/strategies.py).
    supports_sharding = False
    sharding_refusal = "a small head on fixed feature vectors has no transformer to shard"

    def __init__(
        self,
        head: Literal["linear", "mlp"] = "linear",
        hidden: int = 256,
        dropout: float = 0.1,
        num_labels: int | None = None,
        input_dim: int | None = None,
        task_type: TaskType | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if head not in ("linear", "mlp"):
            raise ConfigError(f"head must be 'linear' or 'mlp', got {head!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        self.net: nn.Module | None = None
        if input_dim is not None and num_labels is not None:
            self._build(input_dim, num_labels, task_type)

    # ---------------------------------------------------------------------------------------------- building
    def _build(self, input_dim: int, num_labels: int, task_type: TaskType | None) -> None:
        task_type = task_type or ("regression" if num_labels == 1 else "classification")
        if input_dim < 1 or num_labels < 1:
            raise ConfigError(f"input_dim and num_labels must be >= 1, got {input_dim}, {num_labels}")
        if task_type == "classification" and num_labels < 2:
            raise ConfigError(f"classification needs num_labels >= 2, got {num_labels}")
        if task_type == "regression" and num_labels != 1:
            raise ConfigError(f"regression predicts one value: num_labels must be 1, got {num_labels}")
        h = self.hparams
        self.net = build_head(h.head, input_dim, num_labels, h.hidden, h.dropout)
        self.val_metrics = eval_metrics(task_type, num_labels).clone(prefix="val/")
        self.test_metrics = eval_metrics(task_type, num_labels).clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        h.input_dim, h.num_labels, h.task_type = input_dim, num_labels, task_type  # saved with checkpoints

    def configure_model(self) -> None:
        """Build the head from the datamodule's ``input_dim`` / ``num_labels`` / ``task_type`` where not given."""
        h = self.hparams
        dm = self.trainer.datamodule if self._trainer is not None else None
        found = {key: getattr(dm, key, None) for key in ("input_dim", "num_labels", "task_type")}
        if self.net is not None:
            for key, value in found.items():
                if value is not None and value != h[key]:
                    raise ConfigError(f"DownstreamHead has {key}={h[key]!r} but the datamodule gives {value!r}")
            return
        dims = {key: h[key] if h[key] is not None else found[key] for key in found}
        if dims["input_dim"] is None or dims["num_labels"] is None:
            raise ConfigError("DownstreamHead needs input_dim and num_labels, or a datamodule that provides them "
                              "(e.g. RepresentationDataModule)")
        self._build(int(dims["input_dim"]), int(dims["num_labels"]), dims["task_type"])

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, D) -> logits (B, C) for classification, predictions (B,) for regression."""
        if self.net is None:
            raise RuntimeError("DownstreamHead is not built yet: give input_dim and num_labels, or fit/validate it")
        out = self.net(x)  # (B, C)
        return out.squeeze(-1) if self.hparams.task_type == "regression" else out

    def _loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return head_loss(out, labels, self.hparams.task_type)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(self(batch["x"]), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x"].shape[0], sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], metrics: MetricCollection, mean: MeanMetric, stage: str) -> None:
        out = self(batch["x"])  # (B, C) or (B,)
        labels = batch["labels"]  # (B,)
        mean.update(self._loss(out, labels).detach(), weight=labels.shape[0])
        metrics.update(out.detach().float(), labels if self.hparams.task_type == "classification" else labels.float())
        self.log(f"{stage}/loss", mean, prog_bar=stage == "val")
        self.log_dict(metrics)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (B, C) or predicted values (B,)."""
        out = self(batch["x"])
        return out.softmax(dim=-1) if self.hparams.task_type == "classification" else out

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)

