"""DataModules of the suite; importing this package makes each selectable by name in train.py."""

from datamodules.preference import PreferenceDataModule

__all__ = ["PreferenceDataModule"]
