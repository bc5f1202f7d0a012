"""Checkpoints that hold only what trains (DESIGN.md: frozen weights are never written into checkpoints) and name the
class that wrote them; and the one way the suite reads a checkpoint or a saved model config back.

Remote code runs only when the person running the command asks for it (``--model.trust_remote_code true`` or their
own config): never because a checkpoint, an exported folder's ``config.json`` or a hub id says so. Every loader reads
files through :func:`read_checkpoint` / :func:`load_module` / :func:`check_remote_code`: a saved
``trust_remote_code: true`` is refused in one line that says how to allow it, and the value that reaches the backbone
factory is always the command's own.
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from core.errors import ConfigError

# The checkpoint key naming the LightningModule class that wrote it (``package.module.Class``), whoever trained it: a
# LightningCLI run (which also records ``hyper_parameters["_class_path"]``) or a plain ``Trainer``. Export reads it.
MODULE_CLASS_KEY = "module_class"


def class_path(cls: type) -> str:
    """``cls``'s import path, ``package.module.Class``."""
    return f"{cls.__module__}.{cls.__qualname__}"


class TrainableOnlyCheckpoints:
    """LightningModule mixin: checkpoints record the module's class (:data:`MODULE_CLASS_KEY`), and with LoRA
    (``hparams.lora_r > 0``) the frozen base weights stay out of them.

    On load the frozen weights are refilled from the backbone the module was built from, so a resumed run is exact.
    """

    def _frozen_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if not p.requires_grad}  # type: ignore[attr-defined]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODULE_CLASS_KEY] = class_path(type(self))
        if self.hparams.lora_r > 0:  # type: ignore[attr-defined]
            frozen = self._frozen_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A sharded run's strategy restores the weights itself and passes only the metadata here.
        if self.hparams.lora_r > 0 and "state_dict" in checkpoint:  # type: ignore[attr-defined]
            own = self.state_dict()  # type: ignore[attr-defined]
            for name in self._frozen_names():
                checkpoint["state_dict"].setdefault(name, own[name])


# The hyperparameter that lets ``from_pretrained`` import a model folder's own Python code.
REMOTE_CODE = "trust_remote_code"
# How to allow it on the training CLI (``lm-suite fit|validate|test|predict``), named in the refusal.
CLI_OPT_IN = "--model.trust_remote_code true"
# Where Lightning looks for a checkpoint's hyperparameters (``hyper_parameters``, and older names it still reads).
HPARAMS_KEYS = ("hyper_parameters", "hparams", "module_arguments")


def read_checkpoint(path: str | Path, tensors: bool = True) -> dict[str, Any]:
    """``path``'s contents, read with ``weights_only=True`` (tensors memory-mapped where the format allows);
    :class:`ConfigError` if it is missing or no Lightning checkpoint. A sharded run's distributed-checkpoint folder
    (``core.strategies.FSDP2Strategy``) is read whole on this one process: its metadata plus the full
    ``state_dict`` (not the optimizer states); ``tensors=False`` reads the metadata alone (hyperparameters)."""
    import torch

    path = Path(path)
    if path.is_dir():
        return _read_distributed(path, tensors)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError):  # the legacy (pre-zip) format, or a truncated file, has no mmap
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"cannot read {path} as a checkpoint: {first_line(err)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is no Lightning checkpoint (no state_dict)")
    return checkpoint


# The file of a distributed-checkpoint folder that holds everything but the tensors (Lightning's name).
DISTRIBUTED_META = "meta.pt"


def read_distributed_state(path: str | Path, keys: set[str] | None = None) -> dict[str, Any]:
    """The tensors of the distributed-checkpoint folder ``path`` (``state_dict``, ``optimizer_0``...; ``keys``: only
    those), read whole on this one process: nested dicts as saved."""
    import warnings

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        _load_state_dict(state, storage_reader=FileSystemReader(str(path)), planner=_EmptyStateDictLoadPlanner(keys),
                         no_dist=True)
    return state


def _read_distributed(path: Path, tensors: bool) -> dict[str, Any]:
    import torch

    if not (path / DISTRIBUTED_META).is_file() or not (path / ".metadata").is_file():
        raise ConfigError(f"{path} is a folder but no distributed checkpoint (no {DISTRIBUTED_META} and .metadata)")
    try:
        checkpoint = torch.load(path / DISTRIBUTED_META, map_location="cpu", weights_only=True)
        if tensors:
            checkpoint["state_dict"] = read_distributed_state(path, {"state_dict"})["state_dict"]
    except Exception as err:
        raise ConfigError(f"cannot read {path} as a distributed checkpoint: {first_line(err)}") from None
    return checkpoint


def saved_hparams(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters ``load_from_checkpoint`` would pass to the class (every key Lightning reads them from)."""
    merged: dict[str, Any] = {}
    for key in reversed(HPARAMS_KEYS):  # ``hyper_parameters`` wins, as in Lightning
        value = checkpoint.get(key)
        if isinstance(value, Mapping):
            merged.update(value)
    return merged


def check_remote_code(saved: Mapping[str, Any], source: str | Path, allowed: bool, how: str = CLI_OPT_IN) -> None:
    """Refuse ``saved`` (a checkpoint's hyperparameters, an exported folder's config) when it says
    ``trust_remote_code: true`` and the person running the command did not allow it (``allowed``); ``how`` is the
    option that allows it, named in the one-line :class:`ConfigError`."""
    if saved.get(REMOTE_CODE) and not allowed:
        raise ConfigError(
            f"{source} was saved with trust_remote_code: true, which would run Python code from its model's folder or "
            f"hub repo; a file cannot turn that on: pass {how} to allow it if you trust that code")


def load_module(cls: type, ckpt: str | Path, trust_remote_code: bool = False, how: str = CLI_OPT_IN,
                **overrides: Any) -> Any:
    """``cls.load_from_checkpoint(ckpt)`` on the CPU (``ckpt`` a file or a sharded run's folder), read with
    ``weights_only=True``, where the checkpoint cannot
    turn on remote code: a saved ``trust_remote_code: true`` is refused unless ``trust_remote_code`` (the caller's
    own setting) allows it, and the module is built with the caller's value, never the saved one."""
    checkpoint = read_checkpoint(ckpt)
    saved = saved_hparams(checkpoint)
    check_remote_code(saved, ckpt, trust_remote_code, how)
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if REMOTE_CODE in params or (takes_kwargs and REMOTE_CODE in saved):  # the saved value never reaches __init__
        overrides[REMOTE_CODE] = trust_remote_code
    if Path(ckpt).is_dir():  # a sharded run's folder, already read whole: build the class from what it holds
        from lightning.pytorch.core.saving import _load_state

        return _load_state(cls, checkpoint, **overrides)
    return cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, **overrides)


def first_line(err: BaseException) -> str:
    """An exception's first line (its type name when it has no message): for one-line user errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but each file goes to a temporary name beside its target and is renamed into
    place once complete (``os.replace``, same folder so same filesystem): a full disk or a kill mid-write leaves the
    previous ``last.ckpt`` intact, never a truncated file under the real name. (Lightning's own writer stages the file
    in the system temp folder, whose move onto another filesystem is a copy that can stop half-way.) Remote paths
    (``s3://``...) and ``storage_options`` go to Lightning's writer unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
