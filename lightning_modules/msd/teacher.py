"""MSD's teacher outputs, computed once and kept on disk, so that training runs no teacher forward.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021, need
the teacher's predictions on three inputs per row: the full input, the image only and the text only (their
saliencies come from the same three). The teacher is frozen, so these are fixed: :class:`TeacherOutputs` holds them
for every training row, by its ``index`` (held-out rows included), and :func:`cache_file` names the file by a key
over everything they depend on:

- the teacher: its weights (``model_fingerprint``) and the settings that shape its outputs (backbones, fusion,
  pooling: ``classifier_config`` less the optimiser's);
- the rows (``MultimodalDataModule.fingerprint``: ids, texts, labels, image paths with their byte size and
  modification time; not the tokens);
- how the teacher sees them (:class:`TeacherSettings`: removal modes, image size and normalisation, max_length).

A changed teacher, dataset or setting is a cache miss, never a stale hit (a copied image folder is a miss too). The
file is safetensors: ``logits`` (N, 3, L) float32 in the order of ``modality.VIEWS``, the key's parts in its
metadata. Images go through the evaluation transform (no random flip), and the teacher runs in float32 whatever the
training precision.

The MSD module fills the cache itself at setup (``teacher_outputs: cached``; each rank a shard under DDP). A teacher
with another tokenizer or image size than the student (each model then sees the rows its own way) needs its cache
filled apart, by ``lm-suite teacher-cache`` (:mod:`pipelines.teacher_cache`) with the training run's flags.

A missing teacher is trained first when MSD names a ``teacher_recipe`` (:func:`teacher_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from core.backbones import model_fingerprint
from core.errors import ConfigError
from core.shard_cache import save_tensor
from lightning_modules.msd.modality import views

DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID")
OPTIMISER_ARGS = ("lr", "weight_decay", "warmup_steps", "lr_schedule", "init_seed", "image_pretrained",
                  "trust_remote_code")


@dataclass(frozen=True)
class TeacherSettings:
    """What decides the teacher's outputs besides its weights and the rows."""

    image_mode: str
    text_mode: str
    image_size: int
    max_length: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @classmethod
    def of(cls, teacher: Any, datamodule: Any, image_mode: str, text_mode: str) -> TeacherSettings:
        """The teacher's image size (it sees images at its own size), the data's other settings."""
        h = datamodule.hparams
        return cls(image_mode, text_mode, int(teacher.hparams.image_size), int(h.max_length),
                   tuple(map(float, h.image_mean)), tuple(map(float, h.image_std)))


class TeacherOutputs:
    """Teacher logits on the three views of every training row: ``lookup(index (B,)) -> (3, B, L)``."""

    def __init__(self, logits: Tensor) -> None:
        if logits.ndim != 3 or logits.shape[1] != 3:
            raise ValueError(f"need logits (N, 3, L), got {tuple(logits.shape)}")
        self.logits = logits.float()  # (N, 3, L), row i = the row of index i

    @property
    def num_labels(self) -> int:
        return int(self.logits.shape[-1])

    def to(self, device: torch.device | str) -> TeacherOutputs:
        self.logits = self.logits.to(device)
        return self

    def lookup(self, index: Tensor) -> Tensor:
        """The cached logits (3, B, L) of the rows ``index`` (B,), on the cache's device."""
        if index.device.type == "cpu" and index.numel() and int(index.max()) >= self.logits.shape[0]:
            raise KeyError(f"row {int(index.max())} is not in the teacher-output cache of {self.logits.shape[0]} "
                           "rows (computed for other data?)")
        return self.logits[index.to(self.logits.device)].transpose(0, 1)  # (3, B, L)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        save_tensor(path, "logits", self.logits.cpu(), metadata)

    @classmethod
    def load(cls, path: Path) -> TeacherOutputs:
        return cls(load_file(str(path))["logits"])


def cache_metadata(teacher: Any, data_fp: str, settings: TeacherSettings) -> dict[str, str]:
    """The key's parts: the teacher (weights, shaping settings), the rows, the settings."""
    config = {k: v for k, v in teacher.classifier_config().items() if k not in OPTIMISER_ARGS}
    teacher_fp = model_fingerprint(teacher.net, json.dumps(config, sort_keys=True))
    return {"teacher": teacher_fp, "data": data_fp, "settings": json.dumps(asdict(settings), sort_keys=True)}


def cache_file(cache_dir: str | Path, metadata: dict[str, str]) -> Path:
    """``<cache_dir>/teacher-<key>.safetensors``, the key a sha256 over the metadata (module docstring)."""
    key = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"teacher-{key}.safetensors"


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@torch.no_grad()
def compute_outputs(teacher: nn.Module, batches: Any, num_rows: int, settings: TeacherSettings, tokenizer: Any,
                    device: torch.device | str = "cpu") -> Tensor:
    """Logits (num_rows, 3, L) of ``teacher`` (eval mode, float32) on the three views of every batch, on the CPU; rows
    that no batch holds (another rank's shard) stay 0. The global RNG is left as it was (iterating a DataLoader
    draws from it), so a run trains the same whether it computed the cache or read it."""
    was_training = teacher.training
    teacher.eval()
    with torch.random.fork_rng(devices=[]):
        result = _forward_all(teacher, batches, num_rows, settings, tokenizer, device)
    teacher.train(was_training)
    return result if result is not None else torch.zeros(num_rows, 3, 1)


def _forward_all(teacher: nn.Module, batches: Any, num_rows: int, settings: TeacherSettings, tokenizer: Any,
                 device: torch.device | str) -> Tensor | None:
    result: Tensor | None = None
    for batch in batches:
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        v = views(batch, settings.image_mode, settings.text_mode, tokenizer, settings.image_mean, settings.image_std)
        with torch.autocast(torch.device(device).type, enabled=False):
            out = teacher(v).float()  # (3B, L)
        if result is None:
            result = torch.zeros(num_rows, 3, out.shape[-1])
        result[batch["index"].cpu()] = out.view(3, -1, out.shape[-1]).transpose(0, 1).cpu()  # (B, 3, L)
    return result


def teacher_path(teacher: str, recipe: str | None, strategy: Any = None,
                 train: Callable[[str], None] | None = None) -> Path:
    """The teacher's path; when it is missing and ``recipe`` names a training config, rank 0 first trains it
    (``lm-suite fit --config recipe``, which must export it there: ``callbacks.ExportModel``). Other ranks wait
    (``strategy`` None: one process).

    ``train(recipe)`` trains it in this process (the one-process ``lm-suite teacher-cache``). Without it, the MSD
    module at setup, maybe inside a DDP job, trains it in a fresh process of its own: ``python -m pipelines.train``
    without the launcher's variables, so the nested run is a plain one-process run."""
    path = Path(teacher)
    if not path.exists() and recipe:
        failed, error = "", None
        if strategy is None or strategy.is_global_zero:
            rank_zero_info(f"no teacher at {path}: training one with {recipe}")
            try:
                failed = _train_apart(recipe) if train is None else _train_here(train, recipe)
            except Exception as err:  # a crash, not a failed run: the other ranks hear of it, this one re-raises it
                failed, error = f"{type(err).__name__}: {err}", err
        if strategy is not None:
            failed = strategy.broadcast(failed, src=0)  # every rank raises, none waits forever
        if error is not None:
            raise error
        if failed:
            raise ConfigError(f"training the teacher with {recipe} failed: {failed}")
        if not path.exists():
            raise ConfigError(f"{recipe} trained, but wrote no teacher at {path}: its callbacks.ExportModel must "
                              f"have dirpath {path}")
    if not path.exists():
        raise ConfigError(f"no teacher at {path}: train one (lm-suite fit --config "
                          "configs/multimodal_teacher.yaml) or set model.teacher_recipe")
    return path


def _train_apart(recipe: str) -> str:
    """Train ``recipe`` in a fresh one-process run; "" when it succeeds, else the end of its stderr."""
    cmd = [sys.executable, "-m", "pipelines.train", "fit", "--config", recipe]
    # A plain one-process run, even from inside a DDP job: none of the launcher's variables. It imports the suite
    # this process imported, installed or not (this process's import path).
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return done.stderr[-2000:] if done.returncode != 0 else ""


def _train_here(train: Callable[[str], None], recipe: str) -> str:
    """Train ``recipe`` with ``train`` in this process; "" when it succeeds. A CLI's error exit (it has printed the
    reason) is a failed run."""
    try:
        train(recipe)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return f"exit status {exit_.code} (its error is printed above)"
    return ""


def check_teacher_data(teacher: Any, datamodule: Any) -> None:
    """Teacher and data must share a label space; raises :class:`ConfigError` naming what differs."""
    th = teacher.hparams
    if th.num_labels != datamodule.num_labels or bool(th.multi_label) != bool(datamodule.multi_label):
        raise ConfigError(
            f"the teacher predicts {th.num_labels} {'multi' if th.multi_label else 'single'}-label classes, the data "
            f"has {datamodule.num_labels} {'multi' if datamodule.multi_label else 'single'}-label classes: teacher "
            "and student must share one label space")
    if th.get("label_names") is not None and list(th.label_names) != list(datamodule.label_names):
        raise ConfigError(f"the teacher's classes {list(th.label_names)} are not the data's "
                          f"{list(datamodule.label_names)} (same number, other names or order)")


