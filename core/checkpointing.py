"""Checkpoints that hold only what trains (DESIGN.md: frozen weights are never written into checkpoints) and name the
class that wrote them."""

from __future__ import annotations

from typing import Any

# The checkpoint key naming the LightningModule class that wrote it (``package.module.Class``), whoever trained it: a
# LightningCLI run (which also records ``hyper_parameters["_class_path"]``) or a plain ``Trainer``. Export reads it.
MODULE_CLASS_KEY = "module_class"


def class_path(cls: type) -> str:
    """``cls``'s import path, ``package.module.Class``."""
    return f"{cls.__module__}.{cls.__qualname__}"


class TrainableOnlyCheckpoints:
    """LightningModule mixin: checkpoints record the module's class (:data:`MODULE_CLASS_KEY`), and with LoRA
    (``hparams.lora_r > 0``) the frozen base weights stay out of them.

    On load the frozen weights are refilled from the backbone the module was built from, so a resumed run is exact.
    """

    def _frozen_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if not p.requires_grad}  # type: ignore[attr-defined]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODULE_CLASS_KEY] = class_path(type(self))
        if self.hparams.lora_r > 0:  # type: ignore[attr-defined]
            frozen = self._frozen_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.lora_r > 0:  # type: ignore[attr-defined]
            own = self.state_dict()  # type: ignore[attr-defined]
            for name in self._frozen_names():
                checkpoint["state_dict"].setdefault(name, own[name])
