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
from core.io import atomic_path, check_output_folder

EXPORT_HINT = "export into a new or empty folder, or pass --overwrite to replace only the files the export writes"


def export_causal_lm(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    merge_lora: bool = True,
    extra: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (LoRA merged into a copy, or the adapter alone) and tokenizer into ``out_dir``.

    ``extra(folder)`` may write further files (a reward head, ...) into the folder before it is put in place. The
    folder records what it wrote in :data:`core.io.MANIFEST`; a new or empty folder, or a previous export, is
    replaced (atomically, or nearly: :mod:`core.io`), and the files of a previous export that this one no longer
    writes are removed. A non-empty folder that is no export of the suite is refused (:class:`ConfigError`, before
    any work) unless ``overwrite``; files that are not the export's are never removed.
    """
    out = Path(out_dir)
    check_output_folder(out, overwrite=overwrite, hint=EXPORT_HINT)
    if is_peft(model) and merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_path(out, overwrite=overwrite, manifest=True, hint=EXPORT_HINT) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
    return out
