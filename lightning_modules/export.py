"""Export a trained policy as a Hugging Face folder (safetensors) that ``from_pretrained`` loads.

    python -m lightning_modules.export --ckpt runs/dpo/checkpoints/last.ckpt --out exported/   # DPO, SFT or CriticRM
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from datamodules.io import atomic_path
from lightning_modules.backbones import is_peft


def export_causal_lm(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    merge_lora: bool = True,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``model`` (LoRA merged into a copy, or the adapter alone) and tokenizer; atomic: temp folder, rename.

    ``extra(folder)`` may write further files (a reward head, ...) into the folder before it is renamed.
    """
    out = Path(out_dir)
    if is_peft(model) and merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
    return out


def _module_class(ckpt: Path, name: str) -> type:
    """The LightningModule class of ``ckpt``: ``name`` (DPO, SFT), or guessed from its hyperparameters."""
    import torch

    from lightning_modules.critic_rm import CriticRM
    from lightning_modules.dpo import DPO
    from lightning_modules.sft import SFT

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
