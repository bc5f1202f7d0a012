"""Preference training: DPO (with its reference model and pair packing) and SFT, on instruction-following pairs."""

from lightning_modules.dpo.module import DPO
from lightning_modules.dpo.sft import SFT

__all__ = ["DPO", "SFT"]
