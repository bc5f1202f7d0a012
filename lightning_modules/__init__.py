"""LightningModules of the suite; importing this package makes each selectable by name in train.py."""

from lightning_modules.critic_rm import CriticRM
from lightning_modules.dpo import DPO
from lightning_modules.heads import DownstreamHead
from lightning_modules.msd import MSD
from lightning_modules.multimodal import MultimodalClassifier
from lightning_modules.multitask import MultiTaskEncoder
from lightning_modules.prefix_tuning import PrefixTuning
from lightning_modules.sft import SFT
from lightning_modules.unirex import UNIREX

__all__ = [
    "DPO", "SFT", "CriticRM", "DownstreamHead", "MSD", "MultimodalClassifier", "MultiTaskEncoder", "PrefixTuning",
    "UNIREX",
]
