"""Fill MSD's teacher-output cache apart from training: ``lm-suite teacher-cache``, one process.

The MSD module fills the cache itself at setup (``teacher_outputs: cached``). A teacher with another tokenizer or
image size than the student (each model then sees the rows its own way) needs it filled here first; give this command
the flags of the training run::

    lm-suite teacher-cache --config configs/msd.yaml [--data.data_dir ...] [--device cuda]

It parses them as ``lm-suite fit`` does, tokenizes and resizes for the teacher, and writes the file that training
then reads (:mod:`lightning_modules.msd.teacher` says what the file holds and what its name depends on). A missing
teacher is trained first, in this process, by the run's ``model.teacher_recipe``.

While it works the command holds an exclusive lock on the run's ``model.cache_dir`` (:func:`core.locks.output_lock`,
the file ``<cache_dir>.lock`` beside it), taken before the teacher is loaded or trained: a second ``teacher-cache``
into the same cache stops at once with an error naming the first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.errors import ConfigError, DataError
from core.locks import output_lock
from lightning_modules.msd.teacher import (
    TeacherOutputs,
    TeacherSettings,
    cache_file,
    cache_metadata,
    check_teacher_data,
    compute_outputs,
    teacher_path,
)


def train_recipe(recipe: str) -> None:
    """Train the config ``recipe`` in this process: ``lm-suite fit --config recipe``."""
    from pipelines import train

    train.main(["fit", "--config", recipe])


def main(argv: list[str] | None = None) -> Path:
    """Fill the teacher-output cache of a training run, given its ``lm-suite fit`` flags (module docstring); the
    teacher is trained first by its ``teacher_recipe`` when it is missing."""
    from pipelines.train import SuiteCLI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where the teacher runs (cpu, cuda, cuda:1...)")
    args, flags = parser.parse_known_args(argv)
    cli = SuiteCLI(args=flags, run=False)  # the training run's model and data arguments, as lm-suite fit reads them
    h = cli.model.hparams
    if "teacher" not in h:
        raise ConfigError(f"the model is {type(cli.model).__name__}, not MSD: nothing to cache")
    with output_lock(Path(h.cache_dir)):  # before the teacher is loaded or trained: a second run stops at once
        return _fill(cli, args.device)


def _fill(cli: Any, device: str) -> Path:
    """:func:`main`'s work, under the lock on the cache folder."""
    from datamodules.multimodal import MultimodalDataModule
    from lightning_modules.msd.classifier import MultimodalClassifier

    h = cli.model.hparams
    teacher = MultimodalClassifier.load(teacher_path(h.teacher, h.teacher_recipe, train=train_recipe),
                                        trust_remote_code=bool(h.get("trust_remote_code")),
                                        how="--model.trust_remote_code true").to(device)  # the run's, not the file's
    th = teacher.hparams
    # The teacher sees the rows its own way: its tokenizer and image size.
    data_args = {k: v for k, v in cli.datamodule.hparams.items() if not k.startswith("_")}  # less CLI bookkeeping
    dm = MultimodalDataModule(**{**data_args, "tokenizer": th.text_backbone, "image_size": th.image_size})
    dm.setup("fit")
    check_teacher_data(teacher, dm)
    settings = TeacherSettings.of(teacher, dm, h.image_removal, h.text_removal)
    meta = cache_metadata(teacher, dm.fingerprint("train"), settings)
    path = cache_file(h.cache_dir, meta)
    if path.exists():
        print(f"teacher outputs already cached: {path}")
        return path
    rows = len(dm.examples("train"))
    TeacherOutputs(compute_outputs(teacher.net, dm.teacher_loader("train"), rows, settings, dm.tokenizer,
                                   device)).save(path, meta)
    print(f"teacher outputs of {rows} rows cached: {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
