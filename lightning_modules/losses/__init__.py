"""Losses: plain tensors in, (loss, metrics) out. Kept apart from modules so they test on hand-made tensors."""

from lightning_modules.losses.dpo import dpo_loss
from lightning_modules.losses.logprobs import masked_sum, token_logps

__all__ = ["dpo_loss", "masked_sum", "token_logps"]
