"""AdamW with linear warm-up and a constant, linear or cosine schedule, shared by the suite's modules.

LightningCLI's own ``--optimizer`` / ``--lr_scheduler`` flags still override this when given.

The schedule's length (``trainer.estimated_stepping_batches``) is read lazily, at the first step that needs it, never
in ``configure_optimizers``: with ``max_epochs`` set, reading it there builds the training loader before Lightning
restores the checkpoint's loops, and Lightning then never hands that loader its saved position, so a mid-epoch
resume would restart the epoch at batch 0 (Lightning-AI/pytorch-lightning#20550). Any other schedule over the run
reads it the same way (:func:`stepping_total`; CriticRM's critique weight, at its first loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule


@dataclass
class OptimSpec:
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def stepping_total(module: LightningModule) -> Callable[[], int]:
    """A function returning the run's optimizer steps (0 without a trainer), read once at its first call.

    Call it from a step, not from ``configure_optimizers`` / ``setup`` / ``on_fit_start`` (see the module docstring):
    by the first training step the loader is built, restored and counted, so no second loader is built either.
    """
    total: list[int] = []

    def get() -> int:
        if not total:
            total.append(int(module.trainer.estimated_stepping_batches) if module._trainer is not None else 0)
        return total[0]

    return get


def configure_adamw(module: LightningModule, spec: OptimSpec, params: Any = None) -> dict[str, Any]:
    """AdamW over ``params`` (default: every trainable parameter of ``module``), decay on matrices only."""
    params = [p for p in (module.parameters() if params is None else params) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=spec.betas,
    )
    if spec.warmup_steps == 0 and spec.schedule == "constant":
        return {"optimizer": opt}
    total = stepping_total(module)

    def factor(step: int) -> float:
        # At step <= warmup the factor does not depend on the total (LambdaLR asks for step 0 at construction).
        return lr_lambda(step, spec.warmup_steps, total() if step > spec.warmup_steps else step, spec.schedule)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
