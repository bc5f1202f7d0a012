"""PrefixTuning LightningModule: one task prefix (plus a small head) trained on a frozen encoder.

Huang et al. (Findings of EMNLP 2023) train a prefix per source task independently; the frozen encoder under each
prefix later yields the fixed text representations (:func:`~lightning_modules.prefix.networks.extract`). Only the
prefix and the head train and are checkpointed; the encoder is rebuilt from ``backbone`` (and ``init_seed`` for a
random-init preset), stays in eval mode (no dropout) and keeps bit-identical weights. With ``registry`` set, the
materialised prefix is saved under ``task`` when training ends. Batches: ``{"input_ids", "attention_mask",
"labels"}`` (optional ``token_type_ids``), e.g. from ``datamodules.multitask.TextTaskDataModule``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import Accuracy, MeanSquaredError

from core.backbones import PRESETS, build_encoder, check_model_name, load_tokenizer, model_fingerprint
from core.errors import ConfigError
from core.heads import pool
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable
from lightning_modules.prefix.loss import head_loss
from lightning_modules.prefix.networks import (
    Prefix,
    PrefixEncoder,
    PrefixShape,
    encode,
    position_limit,
    warn_truncated,
)

ENCODER = "encoder."  # state-dict prefix of the frozen weights, kept out of checkpoints


class PrefixTuning(Shardable, LightningModule):
    """Prefix-tuning (Li & Liang 2021) of one task on a frozen BERT-style encoder.

    Args:
        backbone: encoder name for :func:`~core.backbones.build_encoder` (``tiny-bert``, ``hf:<folder>``).
        task: the task's name; the prefix is registered under it.
        num_labels: 1 = regression (MSE), > 1 = classification (cross-entropy).
        prefix_length, reparameterize, prefix_hidden: the prefix
            (:class:`~lightning_modules.prefix.networks.PrefixEncoder`).
        pooling: ``cls`` (first token) or ``mean`` (over real tokens) before the linear head.
        lr, weight_decay: AdamW (``core/optim.py``) over the prefix and the head.
        max_length: inputs are cut to ``min(max_length, max_position_embeddings - prefix_length)`` tokens.
        registry: a prefix registry folder; when set, ``on_train_end`` saves the prefix there as ``task``.
        init_seed: seeds the prefix and head init, and a random-init preset encoder.
    """

    def __init__(
        self,
        backbone: str = "tiny-bert",
        task: str = "task",
        num_labels: int = 2,
        prefix_length: int = 8,
        reparameterize: bool = True,
        prefix_hidden: int = 128,
        pooling: Literal["cls", "mean"] = "mean",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        max_length: int = 128,
        registry: str | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_model_name(backbone)
        if num_labels < 1:
            raise ConfigError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if registry is not None:
            from lightning_modules.prefix.registry import check_name

            check_name(task)
        self.tokenizer = load_tokenizer(backbone)
        encoder = build_encoder(backbone, seed=init_seed)
        encoder.requires_grad_(False)
        self.encoder = encoder.eval()
        self.max_length = min(max_length, position_limit(encoder, prefix_length))
        shape = PrefixShape.of(encoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.prefix = PrefixEncoder(shape, prefix_length, reparameterize, prefix_hidden)
            self.head = nn.Linear(shape.hidden, num_labels)
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay)
        self.val_metric = MeanSquaredError() if num_labels == 1 else Accuracy("multiclass", num_classes=num_labels)
        self.truncated = 0  # texts cut to max_length so far
        self._warned = False

    def train(self, mode: bool = True) -> PrefixTuning:
        """Lightning switches modes around every loop: the frozen encoder stays in eval (no dropout)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _truncate(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
        if ids.shape[1] <= self.max_length:
            return batch
        cut = int(mask[:, self.max_length :].any(dim=1).sum())
        self.truncated += cut
        if cut and not self._warned:  # one warning per run; the running count is in self.truncated
            self._warned = True
            warn_truncated(cut, ids.shape[0], self.max_length, "max_length / max_position_embeddings - prefix length; "
                           "further truncations are only counted in PrefixTuning.truncated")
        return {k: v[:, : self.max_length] if k in ("input_ids", "attention_mask", "token_type_ids") else v
                for k, v in batch.items()}

    def embed(self, batch: dict[str, Any]) -> Tensor:
        """Pooled representation under the trained prefix: (B, hidden)."""
        batch = self._truncate(batch)
        keys, values = self.prefix()  # (L, H, P, D) each
        hidden = encode(self.encoder, batch["input_ids"], batch["attention_mask"], keys, values,
                        token_type_ids=batch.get("token_type_ids"))  # (B, T, hidden)
        return pool(hidden, batch["attention_mask"], self.hparams.pooling)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Logits (B, num_labels)."""
        return self.head(self.embed(batch))

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return head_loss(logits, labels, "regression" if self.hparams.num_labels == 1 else "classification")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits, labels = self(batch), batch["labels"]
        size = labels.shape[0]
        self.log("val/loss", self._loss(logits, labels), prog_bar=True, batch_size=size, sync_dist=True)
        if self.hparams.num_labels == 1:
            self.val_metric.update(logits.squeeze(-1), labels.float())
            self.log("val/mse", self.val_metric, prog_bar=True, batch_size=size)
        else:
            self.val_metric.update(logits.argmax(-1), labels.long())
            self.log("val/acc", self.val_metric, prog_bar=True, batch_size=size)

    def setup(self, stage: str) -> None:
        """Refuse a datamodule whose task has another number of labels (before a cross-entropy index error)."""
        dm = getattr(self.trainer, "datamodule", None)
        n = getattr(dm, "num_labels", None)
        if isinstance(n, int) and n != self.hparams.num_labels:
            raise ConfigError(f"the data has {n} labels (1 = regression) but the model num_labels="
                              f"{self.hparams.num_labels}: set --model.num_labels {n}")

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)

    def materialize(self) -> Prefix:
        """The trained prefix as plain key/value tensors (no MLP)."""
        return self.prefix.materialize(name=self.hparams.task)

    def on_train_end(self) -> None:
        if self.hparams.registry is None:
            return
        backbone = self.hparams.backbone
        # Every rank hashes the encoder: a sharded (FSDP2) encoder's weights are gathered by all ranks together, so
        # rank 0 alone would wait forever.
        fingerprint = model_fingerprint(self.encoder, backbone)
        if not self.trainer.is_global_zero:
            return
        from lightning_modules.prefix.registry import save_prefix

        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        save_prefix(
            self.hparams.registry, self.hparams.task, self.materialize(), task=self.hparams.task, backbone=backbone,
            encoder_fingerprint=fingerprint, pooling=self.hparams.pooling,
            reparameterized=self.hparams.reparameterize, metrics=metrics,
            encoder_seed=self.hparams.init_seed if backbone in PRESETS else None,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints hold the prefix and the head only (DESIGN.md: frozen models are never written)."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(ENCODER)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refill the frozen encoder from the one this module rebuilt, so strict loading and resuming work (a sharded
        run's strategy restores the weights itself and passes no state dict here)."""
        if "state_dict" not in checkpoint:
            return
        for key, value in self.state_dict().items():
            if key.startswith(ENCODER):
                checkpoint["state_dict"].setdefault(key, value)
