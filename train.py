"""The suite's entry point (the design card's ``train.py``): the same LightningCLI as ``lm-suite fit|validate|...``.

    python train.py fit --config configs/dpo.yaml
    python train.py fit --config configs/dpo.yaml --config configs/trainer/ddp.yaml
    python train.py fit --model DPO --data PreferenceDataModule --model.loss_type ipo
    python train.py validate --config configs/dpo.yaml --ckpt_path runs/dpo/checkpoints/last.ckpt

The CLI itself lives in :mod:`pipelines.train`, inside the installed package.
"""

from __future__ import annotations

from pipelines.train import USER_ERRORS, SuiteCLI, main

__all__ = ["USER_ERRORS", "SuiteCLI", "main"]

if __name__ == "__main__":
    main()
