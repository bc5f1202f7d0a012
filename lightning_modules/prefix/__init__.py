"""Fixed text representations from task-specific prefixes on a frozen LM (Huang et al. 2023)."""

from lightning_modules.prefix.heads import DownstreamHead
from lightning_modules.prefix.module import PrefixTuning
from lightning_modules.prefix.multitask import MultiTaskEncoder

__all__ = ["DownstreamHead", "MultiTaskEncoder", "PrefixTuning"]
