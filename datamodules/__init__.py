"""DataModules of the suite; importing this package makes each selectable by name in train.py."""

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
