"""DataModules of the suite; importing this package makes each selectable by name in train.py."""

from datamodules.preference import PreferenceDataModule
from datamodules.reward import RewardDataModule
from datamodules.sft import SFTDataModule

__all__ = ["PreferenceDataModule", "RewardDataModule", "SFTDataModule"]
