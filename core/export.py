"""Export a trained policy as a Hugging Face folder (safetensors) that ``from_pretrained`` loads.

The command over checkpoints is ``lm-suite export`` (:mod:`pipelines.export`)::

    lm-suite export --ckpt runs/dpo/checkpoints/last.ckpt --out exported/   # DPO, SFT or CriticRM
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from core.backbones import is_peft
from core.io import atomic_path


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


