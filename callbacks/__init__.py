"""Callbacks shared by every objective; importing this package lets LightningCLI take them by short name.

IFEval's held-out evaluation (``IFEvalCallback``) lives with the instruction-following pipeline whose verifiers it
runs (:mod:`pipelines.instruction_following.callback`); ``train.py`` registers it too.

    python train.py fit --config configs/dpo.yaml --trainer.callbacks+=TokenThroughput \\
        --trainer.callbacks+=SampleGenerations --trainer.callbacks.every_n_steps=20 \\
        --trainer.callbacks+=NonFiniteGuard
"""

from callbacks.export_model import ExportModel
from callbacks.generations import SampleGenerations
from callbacks.nan_guard import NonFiniteError, NonFiniteGuard
from callbacks.rationale_html import RationaleHTML
from callbacks.throughput import TokenThroughput

__all__ = [
    "ExportModel", "NonFiniteError", "NonFiniteGuard", "RationaleHTML", "SampleGenerations",
    "TokenThroughput",
]
