"""RepresentationDataModule: cached fixed text representations with labels, for light downstream heads.

Huang et al. 2023 train lightweight models for unseen target tasks on fixed representations (a text's
representations under every source-task prefix, combined); the representations are computed once and cached, so a
head trains in seconds. This datamodule reads those caches.

The contract with the extractor (one file per split):

- safetensors: tensors ``embeddings`` (N, D) float32 and ``labels`` (N,) int64 (classification) or float32
  (regression); string metadata (exposed as ``metadata``, from the training file);
- Parquet: columns ``embedding`` (list<float>, each of length D) and ``label`` (int or float).

``task_type=None`` infers the type from the training labels' dtype (integers -> classification). Every split must
agree on D and on the label kind; missing tensors or columns, mismatched N, non-finite values, negative or
fractional classes raise :class:`~core.errors.DataError` naming the file. ``standardize`` z-scores every split
with the training mean and standard deviation (kept in ``mean`` / ``std``).

Batches::

    x       (B, D) float32
    labels  (B,)   int64 (classification) or float32 (regression)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from core.errors import ConfigError, DataError
from datamodules.loaders import resumable_train_loader

TaskType = Literal["classification", "regression"]


def _read_safetensors(path: Path) -> tuple[Tensor, Tensor, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for key in ("embeddings", "labels"):
                if key not in keys:
                    raise DataError(f"{path}: no tensor {key!r} (has {sorted(keys)}; expected embeddings and labels)")
            return f.get_tensor("embeddings"), f.get_tensor("labels"), dict(f.metadata() or {})
    except SafetensorError as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None


def _read_parquet(path: Path) -> tuple[Tensor, Tensor, dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    for column in ("embedding", "label"):
        if column not in table.column_names:
            raise DataError(f"{path}: no column {column!r} (has {table.column_names}; expected embedding and label)")
    rows = table.column("embedding").to_pylist()
    for i, row in enumerate(rows):
        if row is None or len(row) != len(rows[0] or []):
            raise DataError(f"{path}: row {i}: embedding has {0 if row is None else len(row)} values, "
                            f"row 0 has {len(rows[0] or [])}")
    labels = table.column("label")
    if labels.null_count:
        raise DataError(f"{path}: column 'label' has {labels.null_count} missing values")
    label_np = labels.to_numpy()
    embeddings = torch.tensor(np.asarray(rows, dtype=np.float32)).reshape(len(rows), -1)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if not k.startswith(b"pandas")}
    return embeddings, torch.from_numpy(np.array(label_np)), meta


def read_representations(path: str | Path) -> tuple[Tensor, Tensor, dict[str, str]]:
    """``(embeddings (N, D) float32, labels (N,), metadata)`` from a ``.safetensors`` or ``.parquet`` cache."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        x, y, meta = _read_safetensors(path)
    elif path.suffix == ".parquet":
        x, y, meta = _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .safetensors or .parquet)")
    if x.ndim != 2 or not x.is_floating_point():
        raise DataError(f"{path}: embeddings must be a (N, D) float tensor, got {tuple(x.shape)} {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{path}: labels must be a (N,) tensor, got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: {x.shape[0]} embeddings but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{path}: no rows")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0])
        raise DataError(f"{path}: embeddings have NaN or infinite values (first in row {bad})")
    if y.is_floating_point() and not torch.isfinite(y).all():
        bad = int((~torch.isfinite(y)).nonzero()[0])
        raise DataError(f"{path}: labels have NaN or infinite values (first in row {bad})")
    if not (y.is_floating_point() or y.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        raise DataError(f"{path}: labels must be integers or floats, got {y.dtype}")
    return x.float(), y, meta


# Metadata keys (written by ``pipelines.prefix_extract``) that say how a representation was made: the
# splits of one task must agree on them, or the head would be evaluated on another feature space.
SOURCE_KEYS = ("format", "backbone", "encoder_fingerprint", "prefixes", "pooling", "combine", "dim")


def check_same_source(metadata: dict[str, dict[str, str]]) -> None:
    """Raise :class:`DataError` if two files' metadata disagree on a key of :data:`SOURCE_KEYS` both have."""
    (first, ref), *rest = metadata.items()
    for path, meta in rest:
        for key in SOURCE_KEYS:
            if key in ref and key in meta and ref[key] != meta[key]:
                raise DataError(f"{path}: metadata {key}={meta[key]!r}, but {first} has {key}={ref[key]!r} "
                                "(representations made differently; pass check_metadata=False to allow)")


class _Rows(Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class RepresentationDataModule(LightningDataModule):
    """Cached representations and labels (the contract in the module docstring) for :class:`DownstreamHead`.

    Args:
        train_file, val_file, test_file: ``.safetensors`` or ``.parquet`` caches.
        task_type: ``classification`` or ``regression``; None infers it from the training labels' dtype.
        num_labels: number of classes; None takes max label + 1 over the splits (1 for regression).
        standardize: z-score features with the training mean and standard deviation.
        check_metadata: refuse splits whose metadata name different prefixes, pooling, combination or encoder
            (:data:`SOURCE_KEYS`, where both files have the key).

    After ``setup``: ``input_dim``, ``num_labels``, ``task_type``, ``metadata`` (the training file's).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        task_type: TaskType | None = None,
        num_labels: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        standardize: bool = False,
        check_metadata: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # not merged with the module's: Lightning refuses num_labels None vs 2
        if train_file is None and val_file is None and test_file is None:
            raise ConfigError("RepresentationDataModule needs at least one of train_file, val_file, test_file")
        if standardize and train_file is None:
            raise ConfigError("standardize=True needs train_file (the statistics come from the training split)")
        self.datasets: dict[str, _Rows] = {}
        self.metadata: dict[str, str] = {}
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self._task_type: TaskType | None = None
        self._num_labels: int | None = None

    @property
    def task_type(self) -> TaskType:
        if self._task_type is None:
            raise RuntimeError("RepresentationDataModule.setup() has not run yet")
        return self._task_type

    @property
    def num_labels(self) -> int:
        if self._num_labels is None:
            raise RuntimeError("RepresentationDataModule.setup() has not run yet")
        return self._num_labels

    @property
    def input_dim(self) -> int:
        return next(iter(self.datasets.values())).x.shape[1]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        files = {s: f for s, f in (("train", h.train_file), ("val", h.val_file), ("test", h.test_file)) if f}
        loaded = {split: read_representations(path) for split, path in files.items()}
        first = next(iter(files))  # train if given: it decides the type, D and the statistics
        dim, is_float = loaded[first][0].shape[1], loaded[first][1].is_floating_point()
        for split, (x, y, _) in loaded.items():
            if x.shape[1] != dim:
                raise DataError(f"{files[split]}: embeddings have D={x.shape[1]}, but {files[first]} has D={dim}")
            if y.is_floating_point() != is_float:
                raise DataError(f"{files[split]}: labels are {y.dtype}, but {files[first]} has {loaded[first][1].dtype}"
                                " (all splits need integer classes or all float scores)")
        if h.check_metadata:
            check_same_source({files[s]: meta for s, (_, _, meta) in loaded.items()})
        task_type: TaskType = h.task_type or ("regression" if is_float else "classification")
        for split, (_, y, _) in loaded.items():
            if task_type == "classification":
                if y.is_floating_point() and not torch.equal(y, y.round()):
                    raise DataError(f"{files[split]}: labels are fractional, but the task is classification")
                if (y < 0).any():
                    raise DataError(f"{files[split]}: negative class labels (min {y.min().item()})")
                if h.num_labels is not None and (y >= h.num_labels).any():
                    raise DataError(f"{files[split]}: class label {int(y.max())} >= num_labels={h.num_labels}")
        if task_type == "classification":
            self._num_labels = h.num_labels or max(int(y.max()) for _, y, _ in loaded.values()) + 1
        else:
            self._num_labels = 1
        self._task_type = task_type
        h.task_type, h.num_labels = task_type, self._num_labels  # resolved: they agree with the head's, when logged
        self.metadata = loaded[first][2]
        if h.standardize:
            x = loaded[first][0]  # (N, D)
            self.mean = x.mean(dim=0)  # (D,)
            std = x.std(dim=0) if x.shape[0] > 1 else torch.ones(dim)  # (D,)
            self.std = torch.where(std > 1e-8, std, torch.ones_like(std))
        dtype = torch.long if task_type == "classification" else torch.float32
        for split, (x, y, _) in loaded.items():
            if self.mean is not None:
                x = (x - self.mean) / self.std
            self.datasets[split] = _Rows(x.contiguous(), y.to(dtype))

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if "train" not in self.datasets:
            raise ConfigError("RepresentationDataModule: fitting needs train_file")
        return resumable_train_loader(self, self.datasets["train"], shuffle=h.shuffle, seed=h.seed,
                                      batch_size=h.batch_size, num_workers=h.num_workers)

    def _eval_loader(self, split: str) -> DataLoader | list:
        if split not in self.datasets:
            return []
        h = self.hparams
        return DataLoader(self.datasets[split], batch_size=h.eval_batch_size or h.batch_size,
                          num_workers=h.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")
