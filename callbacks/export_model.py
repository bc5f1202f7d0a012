"""Save the trained network on its own at the end of fit: a folder with ``config.json`` and ``model.safetensors``.

For modules with an ``export(folder)`` method (:class:`~lightning_modules.msd.classifier.MultimodalClassifier` and MSD,
whose export is the distilled student alone, without the teacher); ``MultimodalClassifier.load(folder)`` reads it
back for inference::

    lm-suite fit --config configs/multimodal_teacher.yaml --trainer.callbacks.dirpath=my_teacher
    lm-suite fit --model MultimodalClassifier --data MultimodalDataModule ... \\
        --trainer.callbacks+=ExportModel --trainer.callbacks.dirpath=my_model

Under one device or DDP (each rank holds the whole network); sharded strategies are refused at setup.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from core.errors import ConfigError
from core.io import check_output_folder
from core.strategies import whole_model_on_each_rank

HINT = "choose a new or empty folder, or set ExportModel's overwrite to replace only the files the export writes"


class ExportModel(Callback):
    """At the end of ``fit``, rank 0 writes ``pl_module.export(dirpath)`` (default ``<log_dir>/export``), atomically.

    It exports the final weights; for the best checkpoint instead, load it and call ``export``:
    ``MultimodalClassifier.load("best.ckpt").export("folder")`` (an MSD checkpoint gives its student).

    ``dirpath`` must be new, empty or a previous export (it holds ``core.io.MANIFEST``), checked at setup, before
    training; ``overwrite`` lets it be another folder, whose files are kept except those the export writes.
    """

    def __init__(self, dirpath: str | None = None, overwrite: bool = False) -> None:
        self.dirpath = dirpath
        self.overwrite = overwrite

    def _path(self, trainer: Trainer) -> Path:
        log_dir = trainer.log_dir  # a collective: every rank asks
        return Path(self.dirpath) if self.dirpath else Path(log_dir or trainer.default_root_dir) / "export"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "export", None)):
            raise ConfigError(f"ExportModel needs a module with an export(folder) method; {type(pl_module).__name__} "
                              "has none")
        if not whole_model_on_each_rank(trainer.strategy):
            raise ConfigError(f"ExportModel writes the whole network from rank 0: one device or DDP, not "
                              f"{type(trainer.strategy).__name__} (export a checkpoint afterwards instead)")
        if stage == "fit":  # refuse a folder the export may not write before training, not after
            path, problem = self._path(trainer), None
            if trainer.is_global_zero:
                try:
                    check_output_folder(path, overwrite=self.overwrite, hint=HINT)
                except ConfigError as err:
                    problem = str(err)
            problem = trainer.strategy.broadcast(problem, src=0)
            if problem is not None:
                raise ConfigError(f"ExportModel: {problem}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self._path(trainer)
        if trainer.is_global_zero:
            if self.overwrite:
                pl_module.export(path, overwrite=True)
            else:  # a module's own export(folder) need not know overwrite
                pl_module.export(path)
            rank_zero_info(f"exported {type(pl_module).__name__} to {path}")
        trainer.strategy.barrier("export-model")
