"""Multi-task fine-tuning: the baseline that task-specific prefixes are compared against.

Huang et al. 2023 (Findings of EMNLP), "Learning Easily Updated General Purpose Text Representations with Adaptable
Task-Specific Prefixes", compare their fixed representations (frozen LM, one prefix per source task) with those of an
encoder fine-tuned on all source tasks at once. Here: one shared encoder from the backbone factory, one head per
task (linear on the pooled output), task-balanced batches from
:class:`~datamodules.multitask.MultiTaskDataModule` (each batch one task). After training, the encoder is exported
as a Hugging Face folder and its pooled outputs (no prefix) are the baseline's fixed representations, evaluated
with the same downstream heads as the prefixes'. Adding a source task means running all of this again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule
from torch import Tensor, nn

from core.backbones import Dtype, build_encoder, check_model_name, load_tokenizer
from core.errors import ConfigError
from core.heads import eval_metrics, pool
from core.io import atomic_path
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable
from lightning_modules.prefix.loss import head_loss


class MultiTaskEncoder(Shardable, LightningModule):
    """A shared encoder fine-tuned on several tasks, one linear head each (``num_labels == 1``: regression).

    Args:
        backbone: an encoder name for ``build_encoder`` (``tiny-bert``, ``hf:<id or folder>``).
        tasks: task name -> number of labels; None = taken from the datamodule at setup (and saved with the
            hyperparameters, so checkpoints rebuild the heads).
        pooling: ``mean`` over real tokens or the first token (``cls``).
        lr, weight_decay, warmup_steps, lr_schedule: AdamW and its schedule (``core/optim.py``).
    """

    def __init__(
        self,
        backbone: str = "tiny-bert",
        tasks: dict[str, int] | None = None,
        pooling: Literal["cls", "mean"] = "mean",
        dtype: Dtype | None = None,
        trust_remote_code: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        check_model_name(backbone)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        self.encoder = build_encoder(backbone, dtype=dtype, trust_remote_code=trust_remote_code, seed=init_seed)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # BERT's tanh pooler is not used (we pool hidden states): not trained, not DDP'd
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        self.heads = nn.ModuleDict()
        self.val_metrics = nn.ModuleDict()
        self._task: str | None = None  # the task of the current training batch
        if tasks is not None:
            self._build_heads(tasks)

    def _build_heads(self, tasks: dict[str, int]) -> None:
        if not tasks or any(n < 1 for n in tasks.values()):
            raise ConfigError(f"tasks must map each task name to its number of labels (>= 1), got {tasks}")
        width = self.encoder.config.hidden_size
        for name, n in tasks.items():
            self.heads[name] = nn.Linear(width, n)
            self.val_metrics[name] = eval_metrics("regression" if n == 1 else "classification", max(n, 2))

    def setup(self, stage: str) -> None:
        if len(self.heads):
            return
        dm = getattr(self.trainer, "datamodule", None)
        tasks = getattr(dm, "num_labels", None)
        if not isinstance(tasks, dict):
            raise ConfigError("MultiTaskEncoder needs `tasks` or a MultiTaskDataModule")
        self.hparams["tasks"] = dict(tasks)  # saved in checkpoints: load_from_checkpoint rebuilds the heads
        self._build_heads(tasks)

    def pooled(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
        return pool(hidden, attention_mask, self.hparams.pooling)  # (B, H)

    def _out(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        task = batch["task"]
        if task not in self.heads:
            raise ConfigError(f"batch of task {task!r}, but the model has heads for {sorted(self.heads)}")
        pooled = self.pooled(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        out = self.heads[task](pooled)  # (B, n)
        if out.shape[-1] == 1:
            out = out.squeeze(-1)  # (B,): regression
        loss = head_loss(out, batch["labels"], "regression" if out.ndim == 1 else "classification")
        # The other tasks' heads join the graph with weight 0, so DDP's reducer sees every parameter used at every
        # step; on_after_backward then drops their (zero) gradients so that AdamW leaves them alone.
        idle = sum(p.sum() for name, head in self.heads.items() if name != task for p in head.parameters())
        self._task = task
        return out, loss + 0.0 * idle

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        _, loss = self._out(batch)
        b = batch["labels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        self.log(f"train/{batch['task']}/loss", loss, batch_size=b, sync_dist=True)
        return loss

    def on_after_backward(self) -> None:
        for name, head in self.heads.items():
            if name != self._task:
                for p in head.parameters():
                    p.grad = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        out, loss = self._out(batch)
        task = batch["task"]
        metrics = self.val_metrics[task]
        metrics.update(out if out.ndim == 1 else out.argmax(-1), batch["labels"])
        self.log(f"val/{task}/loss", loss, batch_size=batch["labels"].shape[0], add_dataloader_idx=False,
                 sync_dist=True)
        self.log_dict({f"val/{task}/{k}": m for k, m in metrics.items()}, add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)

    def export_pretrained(self, out_dir: str | Path) -> Path:
        """The fine-tuned encoder and its tokenizer as a Hugging Face folder (safetensors), written atomically."""
        out = Path(out_dir)
        with atomic_path(out) as tmp:
            self.encoder.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return out
