"""LightningModules of the suite, one package per system; importing this package makes each selectable by name in
the training CLI (``lm-suite fit --model DPO``)."""

import core.legacy
from lightning_modules.critic_rm import CriticRM
from lightning_modules.dpo import DPO, SFT
from lightning_modules.msd import MSD, MultimodalClassifier
from lightning_modules.prefix import DownstreamHead, MultiTaskEncoder, PrefixTuning
from lightning_modules.unirex import UNIREX

__all__ = [
    "DPO", "SFT", "CriticRM", "DownstreamHead", "MSD", "MultimodalClassifier", "MultiTaskEncoder", "PrefixTuning",
    "UNIREX",
]

core.legacy.install()  # old module paths (before the house plan) still import, with a warning
