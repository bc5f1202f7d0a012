"""The training CLI: LightningCLI over every LightningModule and DataModule of the suite.

``lm-suite fit|validate|test|predict ...``, ``python train.py ...`` and ``python -m pipelines.train ...`` are this
one CLI::

    lm-suite fit --config configs/dpo.yaml
    lm-suite fit --config configs/dpo.yaml --config configs/trainer/ddp.yaml
    lm-suite fit --model DPO --data PreferenceDataModule --model.loss_type ipo
    lm-suite validate --config configs/dpo.yaml --ckpt_path runs/dpo/checkpoints/last.ckpt
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import callbacks  # noqa: F401  (registers the suite's callbacks for --trainer.callbacks short names)
import datamodules  # noqa: F401  (registers every DataModule for --data NAME)
import lightning_modules  # noqa: F401  (registers every LightningModule for --model NAME)
import pipelines.instruction_following.callback  # noqa: F401  (IFEvalCallback, beside the verifiers it runs)
from core.backbones import UnknownModelError
from core.errors import ConfigError, DataError


class SuiteCLI(LightningCLI):
    """LightningCLI with the suite's defaults: any module and datamodule by short name or config."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )


# Errors in the user's input: reported in one line with exit status 2, without a traceback.
USER_ERRORS = (DataError, ConfigError, UnknownModelError)


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The first user error in ``exc``'s chain (jsonargparse wraps errors raised while instantiating)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, USER_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(args: list[str] | None = None, run: bool = True) -> SuiteCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return SuiteCLI(args=args, run=run)
    except Exception as e:
        user = _user_error(e)
        if user is None:
            raise
        print(f"error: {user}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
