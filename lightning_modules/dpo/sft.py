"""SFT LightningModule: a causal LM trained on (prompt, response) pairs, loss on the response tokens only.

In the suite it is the warm-up before preference optimisation (Kim et al. 2025 start DPO from an SFT policy; the
end-to-end instruction-following job warms the tiny offline policy up with it). It shares the backbone factory,
LoRA, optimiser and export with :class:`~lightning_modules.dpo.module.DPO`, and reads batches of
:class:`~datamodules.sft.SFTDataModule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric

from core.backbones import (
    Dtype,
    LoraSpec,
    apply_lora,
    build_causal_lm,
    check_model_name,
    hidden_and_logits,
    load_tokenizer,
    unwrap_peft,
)
from core.checkpointing import TrainableOnlyCheckpoints
from core.losses import global_token_mean, response_nll
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable


class SFT(Shardable, TrainableOnlyCheckpoints, LightningModule):
    """Supervised fine-tuning (token-mean NLL of responses).

    Args:
        backbone, dtype, trust_remote_code, attention, lora_*, gradient_checkpointing, init_seed: as for
            :class:`~lightning_modules.dpo.module.DPO` (with LoRA only the adapter trains and is checkpointed).
        lr, weight_decay, warmup_steps, lr_schedule: AdamW and its schedule (``core/optim.py``).
    """

    def __init__(
        self,
        backbone: str = "tiny-llama",
        dtype: Dtype | None = None,
        trust_remote_code: bool = False,
        attention: Literal["sdpa", "eager"] = "sdpa",
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        gradient_checkpointing: bool = False,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_model_name(backbone)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        policy = build_causal_lm(
            backbone, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attention,
            seed=init_seed,
        )
        if gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = LoraSpec(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules)
        self.policy = apply_lora(policy, lora)
        self.val_nll = MeanMetric()

    def _loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """This rank's token-mean response NLL and its token count."""
        mask = batch["loss_mask"]  # (B, T): position t predicts a response token at t + 1
        positions = mask.reshape(-1).nonzero().squeeze(-1)  # (N,) flat positions in the (B*T) grid, row-major
        _, logits = hidden_and_logits(  # (N, V): the head runs only where a response token is predicted
            unwrap_peft(self.policy), positions, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        )
        return response_nll(logits, batch["targets"][mask], mask.new_ones(logits.shape[0]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics = self._loss(batch)
        loss = global_token_mean(loss, metrics["tokens"])  # ranks' tokens differ: the global batch's token mean
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, metrics = self._loss(batch)
        self.val_nll.update(loss.detach(), weight=metrics["tokens"])  # token-weighted mean over the epoch
        self.log("val/loss", self.val_nll, prog_bar=True)

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)

    def export_pretrained(self, out_dir: str | Path, merge_lora: bool = True, overwrite: bool = False) -> Path:
        """Write the policy as a Hugging Face folder (safetensors) with its tokenizer (``overwrite``:
        :func:`core.export.export_causal_lm`)."""
        from core.export import export_causal_lm

        return export_causal_lm(self.policy, self.tokenizer, out_dir, merge_lora=merge_lora, overwrite=overwrite)
