"""AdamW with linear warm-up and a constant, linear or cosine schedule, shared by the suite's modules.

LightningCLI's own ``--optimizer`` / ``--lr_scheduler`` flags still override this when given.
"""

from __future__ import annotations

import math
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
    total = int(module.trainer.estimated_stepping_batches) if module._trainer is not None else 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, spec.warmup_steps, total, spec.schedule)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
