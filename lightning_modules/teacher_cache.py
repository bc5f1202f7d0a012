"""MSD's teacher outputs, computed once and kept on disk, so that training runs no teacher forward.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021, need
the teacher's predictions on three inputs per row: the full input, the image only and the text only (their
saliencies come from the same three). The teacher is frozen, so these are fixed: :class:`TeacherOutputs` holds them
for every training row by its ``index`` (held-out rows included), and :func:`cache_file` names the file by a key
over everything they depend on:

- the teacher's weights (``model_fingerprint``);
- the rows (``MultimodalDataModule.fingerprint``: ids, image paths and byte sizes, texts, labels; not the tokens);
- how the teacher sees them (:class:`TeacherSettings`: removal modes, image size and normalisation, max_length).

A changed teacher, dataset or setting is a cache miss, never a stale hit. The file is safetensors: ``logits``
(N, 3, L) float32 in the order of ``modality.VIEWS`` and ``index`` (N,) int64, the key's parts in its metadata.
Images go through the evaluation transform (no random flip) when cached.

The MSD module fills the cache itself at setup (``teacher_outputs: cached``; each rank a shard under DDP). To fill
it apart, e.g. for a teacher with another tokenizer or image size than the student (each model then sees the rows
its own way)::

    python -m lightning_modules.teacher_cache --config configs/msd.yaml [--teacher PATH] [--cache-dir DIR]

reads the config's ``data`` section, tokenizes and resizes for the teacher, and writes the file that training
(same config) then reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from datamodules.io import ConfigError, atomic_path
from lightning_modules.backbones import model_fingerprint
from lightning_modules.modality import views

log = logging.getLogger(__name__)


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
    """Teacher logits on the three views of each training row: ``lookup(index (B,)) -> (3, B, L)``."""

    def __init__(self, logits: Tensor, index: Tensor) -> None:
        if logits.ndim != 3 or logits.shape[1] != 3 or index.shape != logits.shape[:1]:
            raise ValueError(f"need logits (N, 3, L) and index (N,), got {tuple(logits.shape)}, {tuple(index.shape)}")
        if index.numel() != index.unique().numel():
            raise ValueError("teacher outputs hold a row index twice")
        self.logits, self.index = logits.float(), index.long()  # (N, 3, L), (N,)
        self._row = torch.full((int(index.max()) + 1 if index.numel() else 0,), -1, dtype=torch.long)
        self._row[self.index] = torch.arange(index.numel())

    @property
    def num_labels(self) -> int:
        return int(self.logits.shape[-1])

    def lookup(self, index: Tensor) -> Tensor:
        """The cached logits (3, B, L) of the rows ``index`` (B,) (on the CPU)."""
        index = index.detach().cpu().long()
        inside = (index >= 0) & (index < self._row.numel())
        rows = torch.where(inside, self._row[index.clamp(0, max(self._row.numel() - 1, 0))], -1)  # (B,)
        if bool((rows < 0).any()):
            missing = index[rows < 0][:5].tolist()
            raise KeyError(f"rows {missing} are not in the teacher-output cache (computed for other data?)")
        return self.logits[rows].transpose(0, 1)  # (3, B, L)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        with atomic_path(path) as tmp:
            save_file({"logits": self.logits.contiguous(), "index": self.index.contiguous()}, str(tmp),
                      metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> TeacherOutputs:
        tensors = load_file(str(path))
        return cls(tensors["logits"], tensors["index"])


def cache_metadata(teacher: Any, data_fp: str, settings: TeacherSettings) -> dict[str, str]:
    """The key's parts: the teacher's weights and backbones, the rows, the settings."""
    th = teacher.hparams
    teacher_fp = model_fingerprint(teacher.net, f"{th.image_backbone}+{th.text_backbone}")
    return {"teacher": teacher_fp, "data": data_fp, "settings": json.dumps(asdict(settings), sort_keys=True)}


def cache_file(cache_dir: str | Path, metadata: dict[str, str]) -> Path:
    """``<cache_dir>/teacher-<key>.safetensors``, the key a sha256 over the metadata (module docstring)."""
    key = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"teacher-{key}.safetensors"


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@torch.no_grad()
def compute_outputs(
    teacher: nn.Module, batches: Any, settings: TeacherSettings, tokenizer: Any, device: torch.device | str = "cpu",
    to_device: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    context: Callable[[], AbstractContextManager] = nullcontext,
) -> TeacherOutputs:
    """Run ``teacher`` (eval mode) on the three views of every batch: this process's :class:`TeacherOutputs`."""
    was_training = teacher.training
    teacher.eval()
    logits, index = [], []
    for batch in batches:
        batch = to_device(batch) if to_device is not None else {k: v.to(device) if isinstance(v, Tensor) else v
                                                               for k, v in batch.items()}
        v = views(batch, settings.image_mode, settings.text_mode, tokenizer, settings.image_mean, settings.image_std)
        with context():
            out = teacher(v).float()  # (3B, L)
        logits.append(out.view(3, -1, out.shape[-1]).transpose(0, 1).cpu())  # (B, 3, L)
        index.append(batch["index"].cpu())
    teacher.train(was_training)
    if not logits:
        return TeacherOutputs(torch.zeros(0, 3, 1), torch.zeros(0, dtype=torch.long))
    return TeacherOutputs(torch.cat(logits), torch.cat(index))


def gather(outputs: TeacherOutputs) -> TeacherOutputs:
    """All ranks' shards joined (every rank gets the whole), sorted by index; the input itself on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return outputs
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (outputs.logits, outputs.index))
    shards = [(lg, ix) for lg, ix in parts if ix.numel()]
    logits, index = torch.cat([lg for lg, _ in shards]), torch.cat([ix for _, ix in shards])
    order = index.argsort()
    return TeacherOutputs(logits[order], index[order])


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


def main(argv: list[str] | None = None) -> Path:
    """Fill the teacher-output cache of a training config (module docstring)."""
    import yaml

    from datamodules.multimodal import MultimodalDataModule
    from lightning_modules.multimodal import MultimodalClassifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="an MSD training config (its data and model sections)")
    parser.add_argument("--teacher", help="the teacher (exported folder or .ckpt); default: the config's")
    parser.add_argument("--cache-dir", help="default: the config's model.cache_dir")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    model_args = dict((config.get("model") or {}).get("init_args") or {})
    data_args = dict((config.get("data") or {}).get("init_args") or {})
    teacher_path = args.teacher or model_args.get("teacher")
    cache_dir = args.cache_dir or model_args.get("cache_dir", ".cache/msd_teacher")
    if not teacher_path:
        raise ConfigError(f"{args.config}: no model.init_args.teacher; pass --teacher")
    teacher = MultimodalClassifier.load(teacher_path)
    th = teacher.hparams
    # The teacher sees the rows its own way: its tokenizer and image size.
    dm = MultimodalDataModule(**{**data_args, "tokenizer": th.text_backbone, "image_size": th.image_size})
    dm.setup("fit")
    check_teacher_data(teacher, dm)
    settings = TeacherSettings.of(teacher, dm, model_args.get("image_removal", "zero"),
                                  model_args.get("text_removal", "empty"))
    meta = cache_metadata(teacher, dm.fingerprint("train"), settings)
    path = cache_file(cache_dir, meta)
    if path.exists():
        print(f"teacher outputs already cached: {path}")
        return path
    outputs = compute_outputs(teacher.net, dm.eval_loader("train"), settings, dm.tokenizer)
    outputs.save(path, meta)
    print(f"teacher outputs of {outputs.index.numel()} rows cached: {path}")
    return path


if __name__ == "__main__":
    main()
