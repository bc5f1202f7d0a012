"""MSD (Jin et al. 2021): vision-language distillation with modality-specific losses and weights."""

from lightning_modules.msd.classifier import MultimodalClassifier
from lightning_modules.msd.module import MSD

__all__ = ["MSD", "MultimodalClassifier"]
