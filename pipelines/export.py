"""Moved from core/export.py (split)."""  # AUTODOC

from __future__ import annotations

import argparse
from pathlib import Path


def _module_class(ckpt: Path, name: str) -> type:
    """The LightningModule class of ``ckpt``: ``name`` (DPO, SFT), or guessed from its hyperparameters."""
    import torch

    from lightning_modules.critic_rm.module import CriticRM
    from lightning_modules.dpo.module import DPO
    from lightning_modules.dpo.sft import SFT

    classes = {"DPO": DPO, "SFT": SFT, "CriticRM": CriticRM}
    if name != "auto":
        return classes[name]
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "use_critiques" in hparams:
        return CriticRM
    return DPO if "beta" in hparams else SFT  # only DPO has a preference temperature


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Export a DPO, SFT or CriticRM checkpoint's model as a Hugging Face folder."
    )
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--no-merge", action="store_true", help="save the LoRA adapter alone")
    parser.add_argument("--module", choices=("auto", "DPO", "SFT", "CriticRM"), default="auto",
                        help="the checkpoint's module")
    args = parser.parse_args()
    module = _module_class(args.ckpt, args.module).load_from_checkpoint(args.ckpt, map_location="cpu",
                                                                         weights_only=True)
    path = module.export_pretrained(args.out, merge_lora=not args.no_merge)
    print(f"exported {args.ckpt} -> {path}")


if __name__ == "__main__":
    main()
