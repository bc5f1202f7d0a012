"""Stop training at the first NaN/inf loss or gradient, keeping the last good weights on disk.

The loss is checked in ``on_before_backward`` and the gradients in ``on_before_optimizer_step`` (after any
AMP unscaling, before clipping). At either point the optimizer has not stepped with the bad values, so the
weights in memory are still the last good ones: they are written to ``<dirpath>/last-good.ckpt`` (a full
Lightning checkpoint: weights, optimizer, loops) and a :class:`NonFiniteError` is raised, naming what went
non-finite, the global step and the checkpoint. The exception is not caught, so ``lm-suite fit`` exits non-zero.

Ranks decide together (``reduce_boolean_decision``, any rank finding a bad value stops them all), so no rank is
left waiting in a collective while another one has stopped. With a fp16 ``GradScaler`` inf gradients are normal
(the scaler skips that step and lowers the scale), so the gradient check is off then; the loss check stays.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient (see the message for which, where, and the checkpoint)."""


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _kind(t: Tensor) -> str:
    t = _local(t).detach()
    return "nan" if bool(torch.isnan(t).any()) else "inf"


class NonFiniteGuard(Callback):
    """Raise :class:`NonFiniteError` at the first non-finite loss or gradient, after saving the last good weights.

    Args:
        check_loss: check the training loss before each backward.
        check_grads: check every gradient before each optimizer step (skipped under a fp16 GradScaler).
        dirpath: folder of the checkpoint; None = the ModelCheckpoint callback's ``dirpath`` if there is one,
            else ``<default_root_dir>/checkpoints``.
        filename: checkpoint file name.
        save_checkpoint: write the last good checkpoint before stopping.
    """

    def __init__(
        self,
        check_loss: bool = True,
        check_grads: bool = True,
        dirpath: str | None = None,
        filename: str = "last-good.ckpt",
        save_checkpoint: bool = True,
    ) -> None:
        self.check_loss = check_loss
        self.check_grads = check_grads
        self.dirpath = dirpath
        self.filename = filename
        self.save_checkpoint = save_checkpoint
        self._scaler_warned = False

    # ------------------------------------------------------------------------------------------------ hooks
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        if not self.check_loss:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            what = f"the training loss is {_kind(loss)}" if bad else "the training loss is non-finite on another rank"
            self._stop(trainer, pl_module, what)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if not self.check_grads:
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            if not self._scaler_warned:
                rank_zero_warn("NonFiniteGuard: a fp16 GradScaler handles inf gradients itself; gradient check off")
                self._scaler_warned = True
            return
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        what: str | None = None
        if named:
            finite = torch.stack([torch.isfinite(_local(g)).all() for _, g in named])  # (P,): one sync below
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten().tolist()
                name, grad = named[bad[0]]
                more = f" (and {len(bad) - 1} more parameters)" if len(bad) > 1 else ""
                what = f"the gradient of parameter {name!r} is {_kind(grad)}{more}"
        if trainer.strategy.reduce_boolean_decision(what is not None, all=False):
            self._stop(trainer, pl_module, what or "a gradient is non-finite on another rank")

    # ---------------------------------------------------------------------------------------------- helpers
    def checkpoint_path(self, trainer: Trainer) -> str:
        """``<dirpath>/<filename>``, ``dirpath`` resolved as described in the class docstring.

        Joined as a string so remote folders (``s3://...``, as ModelCheckpoint allows) keep their scheme.
        """
        dirpath = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath is None:
            dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        return f"{str(dirpath).rstrip('/')}/{self.filename}"

    def _stop(self, trainer: Trainer, pl_module: LightningModule, what: str) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        where = f"at global step {step} (epoch {epoch})"
        if not self.save_checkpoint:
            raise NonFiniteError(f"{what} {where}; training stopped (save_checkpoint=False: no checkpoint written)")
        # The weights should be finite (the optimizer never stepped on bad values); check rather than assume.
        params_bad = any(not bool(torch.isfinite(_local(p.detach())).all()) for p in pl_module.parameters())
        if trainer.strategy.reduce_boolean_decision(params_bad, all=False):
            raise NonFiniteError(f"{what} {where}; the weights themselves are already non-finite, so no "
                                 "last-good checkpoint was written (resume from an earlier checkpoint)")
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank takes part (sharded strategies gather collectively)
        raise NonFiniteError(
            f"{what} {where}; training stopped. The weights before this step (optimizer not stepped) were saved "
            f"to {path}"
        )
