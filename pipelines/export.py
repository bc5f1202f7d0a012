"""Export a DPO, SFT or CriticRM checkpoint's model as a Hugging Face folder (safetensors, with its tokenizer).

    lm-suite export --ckpt runs/dpo/checkpoints/last.ckpt --out my-policy/ [--no-merge] [--overwrite] [--module DPO]

The checkpoint says which module wrote it: ``module_class``, which every exportable module records when it saves
(``core.checkpointing``), whether a LightningCLI run or a plain ``Trainer`` trained it; else LightningCLI's
``hyper_parameters["_class_path"]``. A checkpoint with neither (saved by a plain ``Trainer`` before modules recorded
their class) needs ``--module``, which also overrides what the checkpoint says. A recorded path only selects a class
of :data:`EXPORTABLE`: nothing named in a file is imported. With LoRA the adapter is merged into the base weights
unless ``--no-merge``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.checkpointing import MODULE_CLASS_KEY, first_line, load_module, read_checkpoint
from core.errors import ConfigError

# The classes export writes, by --module name, and every import path a checkpoint may name each by: the defining
# module, the packages that re-export it (LightningCLI records the shortest one, e.g. ``lightning_modules.DPO``), and
# the defining modules before the house plan (``lightning_modules.sft``; ``lightning_modules.dpo`` and
# ``lightning_modules.critic_rm`` were modules then, packages now).
EXPORTABLE: dict[str, tuple[str, ...]] = {
    "DPO": ("lightning_modules.dpo.module.DPO", "lightning_modules.dpo.DPO", "lightning_modules.DPO"),
    "SFT": ("lightning_modules.dpo.sft.SFT", "lightning_modules.dpo.SFT", "lightning_modules.SFT",
            "lightning_modules.sft.SFT"),
    "CriticRM": ("lightning_modules.critic_rm.module.CriticRM", "lightning_modules.critic_rm.CriticRM",
                 "lightning_modules.CriticRM"),
}
BY_PATH = {path: name for name, paths in EXPORTABLE.items() for path in paths}


def exportable_class(name: str) -> type:
    """The module class of ``name``, a key of :data:`EXPORTABLE`."""
    from lightning_modules.critic_rm.module import CriticRM
    from lightning_modules.dpo.module import DPO
    from lightning_modules.dpo.sft import SFT

    return {"DPO": DPO, "SFT": SFT, "CriticRM": CriticRM}[name]


def recorded_class(checkpoint: dict[str, Any]) -> str | None:
    """The import path of the class that wrote ``checkpoint``: its ``module_class``, else the ``_class_path`` of its
    hyperparameters (LightningCLI), else None."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return checkpoint.get(MODULE_CLASS_KEY) or hparams.get("_class_path")


def module_name(ckpt: Path, module: str | None = None) -> str:
    """The :data:`EXPORTABLE` name of ``ckpt``'s module: ``module`` when given, else the class ``ckpt`` records."""
    checkpoint = read_checkpoint(ckpt)  # read even when ``module`` is given: a bad file fails here, in one line
    if module is not None:
        if module not in EXPORTABLE:
            raise ConfigError(f"--module must be one of {', '.join(EXPORTABLE)}, got {module!r}")
        return module
    path = recorded_class(checkpoint)
    choices = ", ".join(EXPORTABLE)
    if path is None:
        raise ConfigError(f"{ckpt} does not record its module class (saved before checkpoints did): pass --module "
                          f"({choices})")
    if path not in BY_PATH:
        raise ConfigError(f"{ckpt} was written by {path}, which export does not write (it writes {choices}); pass "
                          "--module to load it as one of those")
    return BY_PATH[path]


def export(ckpt: Path, out: Path, module: str | None = None, merge_lora: bool = True,
           trust_remote_code: bool = False, overwrite: bool = False) -> tuple[str, Path]:
    """Write ``ckpt``'s model to ``out``; returns the module name and the folder written. ``trust_remote_code`` is
    the command's own (``--trust-remote-code``), never the checkpoint's (``core.checkpointing.load_module``).
    ``out`` must be new, empty or a previous export unless ``overwrite`` (checked before the checkpoint is read);
    files in it that the export does not write are never removed (``core.export.export_causal_lm``)."""
    from core.export import EXPORT_HINT
    from core.io import check_output_folder

    check_output_folder(out, overwrite=overwrite, hint=EXPORT_HINT)
    name = module_name(ckpt, module)
    try:
        model = load_module(exportable_class(name), ckpt, trust_remote_code, how="--trust-remote-code")
    except RuntimeError as err:  # state dict of another module (a wrong --module)
        raise ConfigError(f"{ckpt} does not load as {name}: {first_line(err)}") from None
    return name, model.export_pretrained(out, merge_lora=merge_lora, overwrite=overwrite)


def main(argv: list[str] | None = None) -> Path:
    """``lm-suite export``: errors in the input are one line on stderr, exit status 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, type=Path, help="the Lightning checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="the Hugging Face folder to write")
    parser.add_argument("--no-merge", action="store_true", help="save the LoRA adapter alone")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is no previous export: replace only the files the "
                             "export writes, keep every other file")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the backbone run its own Python code (never taken from the checkpoint)")
    parser.add_argument("--module", choices=tuple(EXPORTABLE), default=None,
                        help="the checkpoint's module class (default: the one it records); overrides the checkpoint")
    args = parser.parse_args(argv)
    try:
        name, path = export(args.ckpt, args.out, module=args.module, merge_lora=not args.no_merge,
                            trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported {args.ckpt} ({name}) -> {path}")
    return path


if __name__ == "__main__":
    main()
