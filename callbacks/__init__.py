"""Callbacks shared by every objective; importing this package lets LightningCLI take them by short name.

    python train.py fit --config configs/dpo.yaml --trainer.callbacks+=TokenThroughput \\
        --trainer.callbacks+=SampleGenerations --trainer.callbacks.every_n_steps=20 \\
        --trainer.callbacks+=NonFiniteGuard
"""

from callbacks.export_model import ExportModel
from callbacks.generations import SampleGenerations
from callbacks.ifeval import IFEvalCallback
from callbacks.nan_guard import NonFiniteError, NonFiniteGuard
from callbacks.rationale_html import RationaleHTML
from callbacks.throughput import TokenThroughput

__all__ = [
    "ExportModel", "IFEvalCallback", "NonFiniteError", "NonFiniteGuard", "RationaleHTML", "SampleGenerations",
    "TokenThroughput",
]
