"""DPO LightningModule: policy, reference and the preference losses, glued together.

The network returns hidden states; log-probs are taken only at response positions
(:mod:`lightning_modules.dpo.packing`), the loss comes from :mod:`lightning_modules.dpo.loss`, and the reference
log-probs from :mod:`lightning_modules.dpo.reference` (a frozen copy, the LoRA-disabled policy, or a disk cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
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
from core.errors import ConfigError
from core.losses import masked_sum, token_logps
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable
from lightning_modules.dpo.loss import LossType, dpo_loss
from lightning_modules.dpo.packing import additive_mask, flex_block_mask, packed_attention_mask
from lightning_modules.dpo.reference import Reference, ReferenceMode

METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
)


class DPO(Shardable, TrainableOnlyCheckpoints, LightningModule):
    """Direct Preference Optimization (Rafailov et al., 2023) and its IPO / hinge / conservative / RPO variants.

    Args:
        backbone: preset name, ``hf:<id or folder>`` or a local folder (see ``core/backbones.py``).
        dtype: parameter dtype of the policy (``bfloat16`` on GPUs); None keeps the default.
        trust_remote_code: allow model code from the hub (off by default).
        attention: ``sdpa`` (CPU and GPU) or ``flex_attention`` (GPU, sparse mask for packed pairs).
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA (PEFT); ``lora_r > 0`` trains an adapter and
            the reference is then the adapter-disabled policy.
        reference: ``auto`` (``adapter`` with LoRA, else ``copy``), ``copy`` (frozen copy in memory),
            ``adapter``, or ``precomputed`` (reference log-probs computed once, cached on disk, no reference
            model held during training).
        reference_backbone: a different reference model (default: the policy's initial weights).
        reference_cache_dir: folder of the precomputed log-prob cache.
        beta, loss_type, label_smoothing, rpo_alpha: the loss (:mod:`lightning_modules.dpo.loss`).
        lr, weight_decay, warmup_steps, lr_schedule: AdamW and its schedule (``core/optim.py``).
        gradient_checkpointing: trade compute for memory on long sequences.
        init_seed: seed of the random init of tiny presets (so a copy and a rebuild agree).
    """

    def __init__(
        self,
        backbone: str = "tiny-llama",
        dtype: Dtype | None = None,
        trust_remote_code: bool = False,
        attention: Literal["sdpa", "flex_attention", "eager"] = "sdpa",
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        reference: ReferenceMode = "auto",
        reference_backbone: str | None = None,
        reference_cache_dir: str = ".cache/reference_logps",
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        gradient_checkpointing: bool = False,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
        if rpo_alpha < 0 or beta <= 0:
            raise ConfigError(f"rpo_alpha must be >= 0 and beta > 0, got rpo_alpha={rpo_alpha}, beta={beta}")
        check_model_name(backbone)
        if reference_backbone is not None:
            check_model_name(reference_backbone)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        lora = LoraSpec(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules)
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        self.policy = build_causal_lm(
            backbone, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attention,
            seed=init_seed,
        )
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference = Reference(
            mode=reference,
            lora=lora.enabled,
            build=lambda: build_causal_lm(
                reference_backbone or backbone, dtype=dtype, trust_remote_code=trust_remote_code,
                attn_implementation=attention, seed=init_seed,
            ),
            name=reference_backbone or backbone,
            cache_dir=reference_cache_dir,
            initial_policy=self.policy if reference_backbone is None else None,
        )
        self.policy = apply_lora(self.policy, lora)
        self.val_metrics = nn.ModuleDict({k.replace("/", "_"): MeanMetric() for k in (*METRICS, "loss")})

    def unregistered_networks(self) -> list[nn.Module]:
        """The frozen reference copy (``copy`` mode), sharded like the policy under FSDP2."""
        return [self.reference.model] if self.reference.model is not None else []

    # ----------------------------------------------------------------------------------------------- forward
    @property
    def tokenizer_name(self) -> str:
        return self.hparams.backbone

    def sequence_logps(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Summed response log-probs of chosen and rejected, (B,) each, plus token counts and chosen NLL."""
        mask = self._attention_mask(batch, next(net.parameters()).dtype)
        idx = {side: batch[f"{side}_index"] for side in ("chosen", "rejected")}  # (B, Lc), (B, Lr) flat positions
        _, logits = hidden_and_logits(  # (B*Lc + B*Lr, V): only where a response token is predicted
            unwrap_peft(net), torch.cat([i.reshape(-1) for i in idx.values()]),
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
        )
        parts = logits.split([i.numel() for i in idx.values()])
        out: dict[str, Tensor] = {}
        for (side, index), part in zip(idx.items(), parts, strict=True):
            side_logits = part.view(*index.shape, -1)  # (B, L, V)
            tok = token_logps(side_logits, batch[f"{side}_tokens"])  # (B, L)
            m = batch[f"{side}_mask"]
            out[side] = masked_sum(tok, m)  # (B,)
            out[f"{side}_lengths"] = m.sum(-1)  # (B,)
            if side == "chosen":
                out["chosen_nll"] = -(tok * m).sum() / m.sum().clamp(min=1)
        return out

    def _attention_mask(self, batch: dict[str, Any], dtype: torch.dtype) -> Any:
        """The mask for ``batch``'s layout, built once per batch and shared by the policy and reference passes."""
        key = f"_attention_mask/{self.hparams.attention}/{dtype}"
        if key in batch:
            return batch[key]
        seg = batch["segment_ids"]  # (R, T)
        if not batch["packed"]:
            mask = (seg != 0).long()  # (R, T): plain causal attention with padding
        elif self.hparams.attention == "flex_attention":
            mask = flex_block_mask(seg)  # sparse BlockMask, no (T, T) tensor
        else:
            mask = packed_attention_mask(seg)  # (R, 1, T, T) bool
            if self.hparams.attention == "eager":
                mask = additive_mask(mask, dtype)
        batch[key] = mask
        return mask

    def _step(self, batch: dict[str, Any], split: str) -> tuple[Tensor, dict[str, Tensor]]:
        pol = self.sequence_logps(self.policy, batch)
        ref_c, ref_r = self.reference.logps(self, batch, split)
        h = self.hparams
        loss, metrics = dpo_loss(
            pol["chosen"], pol["rejected"], ref_c, ref_r, beta=h.beta, loss_type=h.loss_type,
            label_smoothing=h.label_smoothing, chosen_lengths=pol["chosen_lengths"],
            rejected_lengths=pol["rejected_lengths"], chosen_nll=pol["chosen_nll"], rpo_alpha=h.rpo_alpha,
        )
        return loss, metrics

    # ------------------------------------------------------------------------------------------------ hooks
    def on_fit_start(self) -> None:
        self.reference.prepare(self, splits=("train", "val"))

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self.reference.prepare(self, splits=("val",))

    def on_test_start(self) -> None:
        self.reference.prepare(self, splits=("test",))

    def on_predict_start(self) -> None:
        self.reference.prepare(self, splits=("predict",))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics = self._step(batch, "train")
        b = batch["index"].numel()
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        self.log_dict({k: v.float().mean() for k, v in metrics.items()}, batch_size=b, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        loss, metrics = self._step(batch, split)
        b = batch["index"].numel()
        # Per-pair values, and the batch loss weighted by its pairs: epoch means over pairs, synced across ranks.
        metrics = {**metrics, "loss": loss.detach().expand(b)}
        for k in (*METRICS, "loss"):
            metric = self.val_metrics[k.replace("/", "_")]
            metric.update(metrics[k])
            self.log(f"{split}/{k}", metric, prog_bar=k in ("loss", "rewards/accuracies"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Implicit rewards of each pair: beta * (log pi - log ref) for chosen and rejected."""
        pol = self.sequence_logps(self.policy, batch)
        ref_c, ref_r = self.reference.logps(self, batch, "predict")
        beta = self.hparams.beta
        return {"index": batch["index"], "chosen_reward": beta * (pol["chosen"] - ref_c),
                "rejected_reward": beta * (pol["rejected"] - ref_r)}

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)

    # ---------------------------------------------------------------------------------------------- export
    def export_pretrained(self, out_dir: str | Path, merge_lora: bool = True, overwrite: bool = False) -> Path:
        """Write the policy as a Hugging Face folder (safetensors) with its tokenizer (``overwrite``:
        :func:`core.export.export_causal_lm`)."""
        from core.export import export_causal_lm

        return export_causal_lm(self.policy, self.tokenizer, out_dir, merge_lora=merge_lora, overwrite=overwrite)
