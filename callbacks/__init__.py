"""Callbacks shared by every objective; importing this package lets LightningCLI take them by short name.

IFEval's held-out evaluation (``IFEvalCallback``) lives with the instruction-following pipeline whose verifiers it
runs (:mod:`pipelines.instruction_following.callback`); the training CLI (:mod:`pipelines.train`) registers it too.

    lm-suite fit --config configs/dpo.yaml --trainer.callbacks+=TokenThroughput \\
        --trainer.callbacks+=SampleGenerations --trainer.callbacks.every_n_steps=20 \\
        --trainer.callbacks+=NonFiniteGuard
"""

import core.legacy
from callbacks.export_model import ExportModel
from callbacks.generations import SampleGenerations
from callbacks.nan_guard import NonFiniteError, NonFiniteGuard
from callbacks.rationale_html import RationaleHTML
from callbacks.throughput import TokenThroughput

__all__ = [
    "ExportModel", "NonFiniteError", "NonFiniteGuard", "RationaleHTML", "SampleGenerations",
    "TokenThroughput",
]

core.legacy.install()  # old module paths (before the house plan) still import, with a warning


def __getattr__(name: str) -> object:
    """``callbacks.IFEvalCallback`` (old configs) now lives in :mod:`pipelines.instruction_following.callback`."""
    return core.legacy.package_attr(__name__, name)
