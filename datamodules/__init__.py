"""DataModules of the suite; importing this package makes each selectable by name in ``lm-suite fit --data ...``."""

import core.legacy
from datamodules.multimodal import MultimodalDataModule
from datamodules.multitask import MultiTaskDataModule, TextTaskDataModule
from datamodules.preference import PreferenceDataModule
from datamodules.rationale import RationaleDataModule
from datamodules.representations import RepresentationDataModule
from datamodules.reward import RewardDataModule
from datamodules.sft import SFTDataModule

__all__ = [
    "MultimodalDataModule",
    "MultiTaskDataModule",
    "PreferenceDataModule",
    "RationaleDataModule",
    "RepresentationDataModule",
    "RewardDataModule",
    "SFTDataModule",
    "TextTaskDataModule",
]

core.legacy.install()  # old module paths (before the house plan) still import, with a warning
