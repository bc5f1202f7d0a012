"""LightningModules of the suite; importing this package makes each selectable by name in train.py."""

from lightning_modules.dpo import DPO

__all__ = ["DPO"]
