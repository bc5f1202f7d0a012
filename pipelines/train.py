"""The training CLI: LightningCLI over every LightningModule and DataModule of the suite.

``lm-suite fit|validate|test|predict ...``, ``python train.py ...`` and ``python -m pipelines.train ...`` are this
one CLI::

    lm-suite fit --config configs/dpo.yaml
    lm-suite fit --config configs/dpo.yaml --config configs/trainer/ddp.yaml
    lm-suite fit --model DPO --data PreferenceDataModule --model.loss_type ipo
    lm-suite validate --config configs/dpo.yaml --ckpt_path runs/dpo/checkpoints/last.ckpt

With ``--ckpt_path`` the checkpoint's hyperparameters are laid over the command line's (Lightning's rule), all but
``trust_remote_code``: that stays what the command line or config says, and a checkpoint saved with it on is refused
unless the command asks for it (``--model.trust_remote_code true``; ``core.checkpointing``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import callbacks  # noqa: F401  (registers the suite's callbacks for --trainer.callbacks short names)
import datamodules  # noqa: F401  (registers every DataModule for --data NAME)
import lightning_modules  # noqa: F401  (registers every LightningModule for --model NAME)
import pipelines.instruction_following.callback  # noqa: F401  (IFEvalCallback, beside the verifiers it runs)
from core.backbones import UnknownModelError
from core.checkpointing import REMOTE_CODE, AtomicCheckpointIO, check_remote_code, read_checkpoint, saved_hparams
from core.errors import ConfigError, DataError
from core.io import writable_folder
from core.legacy import new_home
from core.strategies import check_sharding, check_strategy_name

_UNKNOWN_KEY = re.compile(r"(?:(?:Option|Key) '([^']+)' is not (?:accepted|expected)|does not accept option '([^']+)')")


def config_files(args: list[str]) -> list[str]:
    """The files that ``--config`` / ``-c`` name in ``args``, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def error_headline(message: str, files: list[str]) -> str:
    """The first line of a CLI error: for a misspelt key, the key and where a config file sets it (``file:line``),
    else the parser's own first line."""
    keys = [a or b for a, b in _UNKNOWN_KEY.findall(message)]
    if not keys:
        return (message.strip().splitlines() or ["invalid arguments"])[0]
    key = keys[-1]  # the innermost: the key itself, not the group holding it
    pattern = re.compile(rf"\s*(?:-\s+)?{re.escape(key.split('.')[-1])}\s*:")
    for name in files:
        try:
            lines = Path(name).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(lines, 1):
            if pattern.match(line):
                return f"{name}:{number}: unknown key {key!r} (misspelt?); details below"
    return f"unknown key {key!r} (misspelt?); details below"


class SuiteParser(LightningArgumentParser):
    """Lightning's parser, whose errors start with one line naming the problem (and the file:line of a misspelt
    key) before jsonargparse's usage and details."""

    config_files: list[str] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if self.exit_on_error:
            sys.stderr.write(f"error: {error_headline(message, SuiteParser.config_files)}\n")
        super().error(message, ex)


class SuiteCLI(LightningCLI):
    """LightningCLI with the suite's defaults: any module and datamodule by short name or config."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        SuiteParser.config_files = config_files(list(sys.argv[1:] if args is None else args))
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_class=SuiteParser,
            args=args,
            run=run,
            **kwargs,
        )

    def before_instantiate_classes(self) -> None:
        """The run's output folder (``--trainer.default_root_dir``, else the working folder) must be writable, and the
        strategy one the suite runs (no DeepSpeed or FSDP1): one line each before any model or data is built, not a
        traceback at the first log or checkpoint."""
        subcommand = self.config.get("subcommand")
        trainer = (self.config[subcommand] if subcommand else self.config).get("trainer") or {}
        check_strategy_name(trainer.get("strategy"))
        writable_folder(trainer.get("default_root_dir") or os.getcwd())

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, writing checkpoints atomically (:class:`~core.checkpointing.AtomicCheckpointIO`)
        wherever the strategy uses Lightning's default writer (single device, DDP, FSDP2 full state dicts; FSDP2's
        distributed folders are renamed into place by :class:`~core.strategies.FSDP2Strategy` itself)."""
        trainer = super().instantiate_trainer(**kwargs)
        check_sharding(self.model, trainer.strategy)  # a strategy the model cannot run under: one line, before work
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lay ``--ckpt_path``'s hyperparameters over the config, as Lightning does, except ``trust_remote_code``: the
        command's own value stands, and a checkpoint saved with it on is refused unless the command asks for it."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).exists():
            return  # "last", "best", or none: nothing read from a file here
        checkpoint = read_checkpoint(ckpt_path, tensors=False)  # a file, or a sharded run's folder
        asked = _asked_remote_code(self.config[subcommand].get("model"))
        check_remote_code(saved_hparams(checkpoint), ckpt_path, asked)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if REMOTE_CODE in hparams:
            hparams[REMOTE_CODE] = asked
        if "_class_path" in hparams:
            _check_recorded_class(hparams["_class_path"], ckpt_path)
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        if _asked_remote_code(self.config[subcommand].get("model")) and not asked:  # never turned on by the file
            check_remote_code({REMOTE_CODE: True}, ckpt_path, False)


def _check_recorded_class(path: Any, ckpt_path: str) -> None:
    """A checkpoint's ``_class_path`` only selects a LightningModule already imported (a class the command line
    names), one of the suite's (``lightning_modules``) or an old path of one (``core.legacy``): it never makes the CLI
    import a module of its choosing."""
    module, _, name = str(path).rpartition(".")
    target = getattr(sys.modules.get(module), name, None)
    if isinstance(path, str) and (isinstance(target, type) and issubclass(target, LightningModule)
                                  or module.split(".")[0] == "lightning_modules" or new_home(module) is not None):
        return
    raise ConfigError(f"{ckpt_path} names the model class {path!r}, which is no LightningModule this command has "
                      "imported (a checkpoint does not make it import code): pass --model to choose the class")


def _asked_remote_code(model: Any) -> bool:
    """The ``trust_remote_code`` that a parsed ``model`` config (``class_path`` + ``init_args``/``dict_kwargs``, or
    plain arguments) holds; False when it holds none."""
    if model is None or not hasattr(model, "get"):
        return False
    for part in ("init_args", "dict_kwargs"):
        args = model.get(part)
        if args is not None and hasattr(args, "get") and args.get(REMOTE_CODE) is not None:
            return bool(args.get(REMOTE_CODE))
    return bool(model.get(REMOTE_CODE) or False)


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
