"""GLUE-style text tasks (a text or a text pair with a class or a score) for prefixes and multi-task baselines.

Huang et al. 2023 ("Learning Easily Updated General Purpose Text Representations with Adaptable Task-Specific
Prefixes") train one prefix per *source* task on a frozen LM (:class:`TextTaskDataModule`, one task) and compare
with multi-task fine-tuning on all source tasks at once (:class:`MultiTaskDataModule`, several named tasks with
task-balanced batches).

Input rows: local JSONL / JSON / Parquet / TSV / CSV files (TSV and CSV have a header row) or a Hugging Face
dataset, with a text (``text_field``, default ``text``; GLUE uses ``sentence``, ``question``...), optionally a
second text (``text_pair_field``: ``sentence1``/``sentence2``, ``question``/``sentence``...) and a label
(``label_field``): an int class for classification, a float for regression. ``task_type=None`` infers the type
from the training labels: all ints -> classification, otherwise regression (our choice; write int labels or set
``task_type``). Every error names the file and line (``path:line``, ``path: row N``) and the field.

Token ids (our choice): the tokenizer's own special tokens when it adds any (BERT: ``[CLS] a [SEP] b [SEP]``),
otherwise ``BOS a EOS [b EOS]`` with whichever of BOS / EOS exists, so that position 0 can be pooled as [CLS].
Too long inputs are cut longest-first to ``max_length`` (counted and warned about).

Batches (right padding)::

    input_ids      (B, T)
    attention_mask (B, T)
    labels         (B,)   int64 (classification) or float32 (regression)
    token_type_ids (B, T) only with tokenizers that make them (BERT's own pair encoding)
    task           str    (MultiTaskDataModule only) the name of the task every row of the batch belongs to
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from core.chat import TokenizerFromModule
from core.errors import ConfigError, DataError
from core.heads import TaskType
from core.records import Record, as_list, inferred_class_count, iter_lines, read_file, read_hf_dataset, read_text
from core.text_encoding import TextEncoder, TextExample, collate_text
from datamodules.loaders import ResumableDataLoader, SkippingSampler, SplitLoaders

SPLITS = ("train", "val", "test")


class TextRow(NamedTuple):
    text: str
    pair: str | None
    label: int | float
    where: str


# ------------------------------------------------------------------------------------------------ reading
def _read_delimited(path: Path, delimiter: str) -> Iterator[Record]:
    """TSV / CSV with a header row; GLUE TSVs are unquoted, so TSV is read with ``QUOTE_NONE``."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader((line for _, line in iter_lines(path, newline="")), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
        return
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
        yield dict(zip(header, row, strict=True)), where


def read_task_records(
    files: list[str] | str | None, hf_dataset: str | None = None, hf_config: str | None = None, split: str = "train"
) -> list[Record]:
    """Rows with their locations from files (``.tsv``/``.csv`` here, the rest via ``records.read_file``) or HF."""
    out: list[Record] = []
    for f in as_list(files):
        path = Path(f)
        if path.suffix in (".tsv", ".csv"):
            if not path.exists():
                raise DataError(f"{path}: no such file")
            out.extend(_read_delimited(path, "\t" if path.suffix == ".tsv" else ","))
        else:
            out.extend(read_file(path))
    if hf_dataset is not None:
        if hf_config is None:
            out.extend(read_hf_dataset(hf_dataset, split))
        else:
            import datasets

            ds = datasets.load_dataset(hf_dataset, hf_config, split=split)
            out.extend((row, f"{hf_dataset}/{hf_config}[{split}] row {i}") for i, row in enumerate(ds))
    return out


def _label_of(value: Any, field_name: str, where: str) -> int | float:
    if isinstance(value, str):  # TSV / CSV cells
        try:
            return int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise DataError(f"{where}: field {field_name!r} must be a number, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise DataError(f"{where}: field {field_name!r} is {value} (expected a finite number)")
        return float(value)
    raise DataError(
        f"{where}: field {field_name!r} must be an int (classification) or a float (regression), "
        f"got {type(value).__name__}"
    )


def _text_of(row: dict[str, Any], field_name: str, role: str, where: str) -> str:
    if field_name not in row or row[field_name] is None:
        raise DataError(f"{where}: missing field {field_name!r} ({role}; fields here: {', '.join(map(str, row))})")
    value = row[field_name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {field_name!r} is empty")
    return value


def parse_rows(records: list[Record], text_field: str, text_pair_field: str | None, label_field: str) -> list[TextRow]:
    """Validate records into :class:`TextRow`; a bad row raises :class:`DataError` naming its place and field."""
    out = []
    for row, where in records:
        text = _text_of(row, text_field, "text_field", where)
        pair = _text_of(row, text_pair_field, "text_pair_field", where) if text_pair_field else None
        if label_field not in row or row[label_field] is None:
            raise DataError(f"{where}: missing field {label_field!r} (label_field)")
        out.append(TextRow(text, pair, _label_of(row[label_field], label_field, where), where))
    return out


def infer_task_type(rows: Sequence[TextRow]) -> TaskType:
    """All labels ints -> classification, else regression."""
    return "classification" if all(isinstance(r.label, int) for r in rows) else "regression"


def check_labels(rows: Sequence[TextRow], task_type: TaskType, label_field: str, num_labels: int | None = None) -> None:
    """Class labels are integers in ``[0, num_labels)``; regression labels are any finite numbers."""
    if task_type == "regression":
        return
    for r in rows:
        if isinstance(r.label, float) and not r.label.is_integer():
            raise DataError(f"{r.where}: field {label_field!r} is {r.label}, not a class index (classification)")
        if r.label < 0:
            raise DataError(f"{r.where}: field {label_field!r} is {r.label} (class indices start at 0; "
                            "GLUE test splits mark unlabelled rows with -1)")
        if num_labels is not None and r.label >= num_labels:
            raise DataError(f"{r.where}: field {label_field!r} is {r.label}, but num_labels is {num_labels}")


# ------------------------------------------------------------------------------------------- task specs
@dataclass
class TaskSpec:
    """One task: where its splits are and how to read them (the keys of a ``MultiTaskDataModule.tasks`` entry)."""

    name: str
    train_files: list[str] | str | None = None
    val_files: list[str] | str | None = None
    test_files: list[str] | str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_train_split: str = "train"
    hf_val_split: str | None = None
    hf_test_split: str | None = None
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    task_type: TaskType | None = None
    num_labels: int | None = None

    @classmethod
    def from_dict(cls, entry: dict[str, Any], where: str) -> TaskSpec:
        known = {f.name for f in fields(cls)}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{where}: each task needs a non-empty string 'name', got {entry!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{where}: task {entry['name']!r} has unknown keys {unknown} "
                              f"(expected some of {sorted(known)})")
        spec = cls(**entry)
        if spec.task_type not in (None, "classification", "regression"):
            raise ConfigError(f"{where}: task {spec.name!r}: task_type must be classification or regression")
        if spec.train_files is None and spec.hf_dataset is None:
            raise ConfigError(f"{where}: task {spec.name!r} needs train_files or hf_dataset")
        return spec

    def records(self, split: str) -> list[Record] | None:
        """The split's rows, or None when the task has no such split."""
        files = {"train": self.train_files, "val": self.val_files, "test": self.test_files}[split]
        hf_split = {"train": self.hf_train_split, "val": self.hf_val_split, "test": self.hf_test_split}[split]
        hf = self.hf_dataset if hf_split is not None else None
        if files is None and hf is None:
            return None
        return read_task_records(files, hf, self.hf_config, hf_split or "train")


def manifest_tasks(path: str | Path, roles: list[str] | None = None) -> list[dict[str, Any]]:
    """Task entries (``TaskSpec`` keys) of a ``tasks.json`` manifest (``datamodules.multitask_synthetic``).

    Its file paths are relative to the manifest's folder; ``roles`` keeps only tasks of those roles.
    """
    path = Path(path)
    try:
        manifest = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    out = []
    for i, task in enumerate(manifest.get("tasks", []) if isinstance(manifest, dict) else []):
        if roles is not None and task.get("role") not in roles:
            continue
        try:
            entry = {
                "name": task["name"], "task_type": task["type"], "num_labels": task.get("num_labels"),
                "text_field": task.get("text_field", "text"), "label_field": task.get("label_field", "label"),
                **{f"{s}_files": str(path.parent / task["files"][s]) for s in SPLITS if s in task["files"]},
            }
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: task {i} lacks {e} (expected name, type and files)") from None
        out.append(entry)
    if not out:
        raise DataError(f"{path}: no tasks" + (f" with role in {roles}" if roles else ""))
    return out


@dataclass
class LoadedTask:
    """A task read, validated and tokenized: its examples per split, type and number of labels."""

    spec: TaskSpec
    task_type: TaskType
    num_labels: int
    splits: dict[str, list[TextExample]]


def _encoded(encoder: TextEncoder, row: TextRow, task_type: TaskType) -> tuple[list[int], int | float, Any]:
    ids, types = encoder(row.text, row.pair)
    return ids, int(row.label) if task_type == "classification" else float(row.label), types


def load_task(spec: TaskSpec, encoder: TextEncoder) -> LoadedTask:
    """Read every split of ``spec``, infer the task type from the training labels, check and tokenize."""
    rows: dict[str, list[TextRow]] = {}
    for split in SPLITS:
        records = spec.records(split)
        if records is not None:
            rows[split] = parse_rows(records, spec.text_field, spec.text_pair_field, spec.label_field)
    if not rows.get("train"):
        raise DataError(f"{spec.train_files or spec.hf_dataset}: no training rows (task {spec.name!r})")
    task_type = spec.task_type or infer_task_type(rows["train"])
    for split_rows in rows.values():
        check_labels(split_rows, task_type, spec.label_field, spec.num_labels)
    if task_type == "classification":
        num_labels = spec.num_labels or inferred_class_count(
            ((int(r.label), r.where) for r in rows["train"]), spec.label_field,
            f"set num_labels if classes may be missing from training (task {spec.name!r})")
        unknown = [r for split_rows in rows.values() for r in split_rows if r.label >= num_labels]
        if unknown:  # a val / test label that training never has (a declared num_labels was checked above)
            raise DataError(f"{unknown[0].where}: field {spec.label_field!r} is {int(unknown[0].label)}, a class the "
                            f"training labels (0..{num_labels - 1}) never have (task {spec.name!r})")
        if num_labels < 2:
            raise DataError(f"{spec.train_files or spec.hf_dataset}: every label is 0; classification needs two "
                            f"classes or more (set num_labels, or task_type=regression) (task {spec.name!r})")
    else:
        num_labels = 1
    before = encoder.truncated
    splits = {
        split: [TextExample(*_encoded(encoder, r, task_type)) for r in split_rows]
        for split, split_rows in rows.items()
    }
    if encoder.truncated > before:
        rank_zero_warn(f"task {spec.name!r}: {encoder.truncated - before} inputs were cut to max_length")
    return LoadedTask(spec, task_type, num_labels, splits)


# ------------------------------------------------------------------------------------------ one task
class TextTaskDataModule(TokenizerFromModule, SplitLoaders, LightningDataModule):
    """One GLUE-style task: a text (or pair) and a class or score per row (batches in the module docstring).

    Args:
        train_files, val_files, test_files: JSONL / JSON / Parquet / TSV / CSV files (a path or a list).
        hf_dataset, hf_config, hf_*_split: a Hugging Face dataset (``save_to_disk`` folder or hub name + config).
        manifest, task: take the files, fields and type of the task named ``task`` from a ``tasks.json``
            manifest (``datamodules.multitask_synthetic``) instead.
        text_field, text_pair_field, label_field: the row fields to read.
        task_type: ``classification`` or ``regression``; None infers it from the training labels.
        num_labels: number of classes; None takes max label + 1 (1 for regression). ``num_labels`` and
            ``task_type`` are attributes after ``setup``.
        tokenizer: model name whose tokenizer to use; None takes the LightningModule's.
    """

    def __init__(
        self,
        train_files: list[str] | str | None = None,
        val_files: list[str] | str | None = None,
        test_files: list[str] | str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        hf_train_split: str = "train",
        hf_val_split: str | None = None,
        hf_test_split: str | None = None,
        manifest: str | None = None,
        task: str | None = None,
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        task_type: TaskType | None = None,
        num_labels: int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        tokenizer: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # not merged with the module's: Lightning refuses num_labels None vs 2
        if (manifest is None) != (task is None):
            raise ConfigError("manifest and task go together (the task named `task` in the manifest)")
        if manifest is not None:
            if train_files is not None or hf_dataset is not None:
                raise ConfigError("give either manifest + task or train_files / hf_dataset, not both")
            entries = [e for e in manifest_tasks(manifest) if e["name"] == task]
            if not entries:
                raise ConfigError(f"{manifest}: no task named {task!r}")
            self.spec = TaskSpec.from_dict(entries[0], manifest)
        else:
            local = {k: v for k, v in self.hparams.items() if k in {f.name for f in fields(TaskSpec)}}
            self.spec = TaskSpec.from_dict({"name": "task", **local}, type(self).__name__)
        if max_length < 4:
            raise ConfigError(f"max_length must be >= 4, got {max_length}")
        self.loaded: LoadedTask | None = None

    @property
    def task_type(self) -> TaskType:
        return self._loaded().task_type

    @property
    def num_labels(self) -> int:
        return self._loaded().num_labels

    @property
    def datasets(self) -> dict[str, list[TextExample]]:
        return self._loaded().splits

    def _loaded(self) -> LoadedTask:
        if self.loaded is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run yet")
        return self.loaded

    def setup(self, stage: str | None = None) -> None:
        if self.loaded is None:
            self.loaded = load_task(self.spec, TextEncoder(self.tokenizer, self.hparams.max_length))
            # resolved, so that they agree with a module's own num_labels when Lightning logs both hparams
            self.hparams.task_type, self.hparams.num_labels = self.loaded.task_type, self.loaded.num_labels

    def _collate(self) -> partial:
        return partial(collate_text, pad_id=self.tokenizer.pad_token_id, task_type=self.task_type)


# ------------------------------------------------------------------------------------- several tasks
def task_quotas(sizes: Sequence[int], num_batches: int, temperature: float | None) -> list[int]:
    """Batches per task in one epoch: ``num_batches`` split in proportion to ``size ** (1 / temperature)``.

    ``temperature=None`` is uniform (every task the same share), 1 is proportional to size; the split is exact
    up to rounding (largest remainders, ties to the earlier task), so every epoch holds the same counts.
    """
    weights = np.ones(len(sizes)) if temperature is None else np.asarray(sizes, dtype=float) ** (1.0 / temperature)
    share = weights / weights.sum() * num_batches
    quotas = np.floor(share).astype(int)
    order = sorted(range(len(sizes)), key=lambda t: (-(share[t] - quotas[t]), t))
    for t in order[: num_batches - int(quotas.sum())]:
        quotas[t] += 1
    return [int(q) for q in quotas]


class TaskBalancedSampler(SkippingSampler):
    """Yields one ``(task index, example indices)`` per training batch: every batch holds a single task.

    Each epoch has ``task_quotas`` batches of each task in a shuffled order (a function of seed and epoch). A task's
    examples are a stream of seeded permutations, so a small task repeats and a big one continues where the last
    epoch stopped. Every rank trains the same task at a step, on its own slice of the stream (DDP never sees a
    task-specific parameter unused on one rank only). A :class:`DistributedSampler` so that Lightning keeps it;
    ``skip_next`` (in batches) resumes mid-epoch exactly.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, quotas: Sequence[int], num_replicas: int = 1,
                 rank: int = 0, seed: int = 0) -> None:
        super().__init__(range(sum(quotas)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.sizes, self.batch_size, self.quotas = list(sizes), batch_size, list(quotas)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return sum(self.quotas)

    def _stream(self, task: int, start: int, n: int) -> list[int]:
        size, out = self.sizes[task], []
        for i in range(start, start + n):
            cycle = i // size
            if (task, cycle) not in self._perms:
                self._perms[(task, cycle)] = np.random.default_rng([self.seed, task, cycle]).permutation(size)
            out.append(int(self._perms[(task, cycle)][i % size]))
        return out

    def schedule(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's batches of ``epoch``: (task index, example indices within the task)."""
        order = torch.tensor([t for t, q in enumerate(self.quotas) for _ in range(q)])
        order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + epoch))]
        seen = [0] * len(self.sizes)
        step = self.batch_size * self.num_replicas
        out = []
        for t in order.tolist():
            start = (epoch * self.quotas[t] + seen[t]) * step + self.rank * self.batch_size
            out.append((t, self._stream(t, start, self.batch_size)))
            seen[t] += 1
        return out

    def epoch_items(self) -> list[tuple[int, list[int]]]:
        return self.schedule(self.epoch)


class _TaskBatches(Dataset):
    """Maps a sampler item ``(task index, example indices)`` to a collated batch with its ``task`` name."""

    def __init__(self, tasks: list[LoadedTask], pad_id: int) -> None:
        self.tasks, self.pad_id = tasks, pad_id

    def __len__(self) -> int:
        return sum(len(t.splits["train"]) for t in self.tasks)

    def __getitem__(self, item: tuple[int, list[int]]) -> dict[str, Any]:
        task = self.tasks[item[0]]
        examples = [task.splits["train"][i] for i in item[1]]
        return collate_task(examples, self.pad_id, task.task_type, task.spec.name)


def collate_task(examples: Sequence[TextExample], pad_id: int, task_type: TaskType, name: str) -> dict[str, Any]:
    """:func:`collate_text` plus the batch's ``task`` name."""
    return {**collate_text(examples, pad_id, task_type), "task": name}


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


class MultiTaskDataModule(TokenizerFromModule, LightningDataModule):
    """Several named text tasks with task-balanced training batches (each batch one task); per-task validation.

    Args:
        tasks: one dict per task with the keys of :class:`TaskSpec` (``name``, ``train_files``, ``val_files``,
            ``test_files``, ``text_field``, ``text_pair_field``, ``label_field``, ``task_type``, ``num_labels``,
            ``hf_dataset``...); LightningCLI takes them as a YAML list.
        manifest, roles: take tasks from a ``tasks.json`` manifest, those whose role is in ``roles`` (None: all).
        task_sampling: ``uniform`` (every task the same number of batches per epoch, our default so that a small
            task is not swamped) or ``temperature`` (in proportion to ``size ** (1 / temperature)``; 1 = by size).
        batches_per_epoch: None = the batches one pass over every task would take.

    After ``setup``: ``task_names``, ``task_types``, ``num_labels`` (dicts by name) and ``val_task_names`` /
    ``test_task_names`` (the task of each evaluation loader, in order).
    """

    def __init__(
        self,
        tasks: list[dict[str, Any]] | None = None,
        manifest: str | None = None,
        roles: list[str] | None = None,
        task_sampling: Literal["uniform", "temperature"] = "uniform",
        temperature: float = 1.0,
        batches_per_epoch: int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        tokenizer: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # not merged with the module's: Lightning refuses num_labels None vs 2
        entries = (manifest_tasks(manifest, roles) if manifest is not None else []) + list(tasks or [])
        if not entries:
            raise ConfigError("MultiTaskDataModule needs tasks or a manifest")
        self.specs = [TaskSpec.from_dict(e, f"{type(self).__name__}.tasks[{i}]") for i, e in enumerate(entries)]
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if batches_per_epoch is not None and batches_per_epoch < len(names):
            raise ConfigError(f"batches_per_epoch={batches_per_epoch} is less than the {len(names)} tasks")
        self.loaded: list[LoadedTask] = []

    def setup(self, stage: str | None = None) -> None:
        if self.loaded:
            return
        encoder = TextEncoder(self.tokenizer, self.hparams.max_length)
        self.loaded = [load_task(spec, encoder) for spec in self.specs]

    @property
    def task_names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def task_types(self) -> dict[str, TaskType]:
        return {t.spec.name: t.task_type for t in self.loaded}

    @property
    def num_labels(self) -> dict[str, int]:
        return {t.spec.name: t.num_labels for t in self.loaded}

    @property
    def val_task_names(self) -> list[str]:
        return [t.spec.name for t in self.loaded if "val" in t.splits]

    @property
    def test_task_names(self) -> list[str]:
        return [t.spec.name for t in self.loaded if "test" in t.splits]

    def quotas(self, world_size: int = 1) -> list[int]:
        """Training batches of each task per epoch (per rank; every rank trains the same task at a step)."""
        h = self.hparams
        sizes = [len(t.splits["train"]) for t in self.loaded]
        total = h.batches_per_epoch or sum(math.ceil(n / (h.batch_size * world_size)) for n in sizes)
        return task_quotas(sizes, total, None if h.task_sampling == "uniform" else h.temperature)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = TaskBalancedSampler([len(t.splits["train"]) for t in self.loaded], h.batch_size,
                                      self.quotas(world), num_replicas=world, rank=rank, seed=h.seed)

        def progress() -> int:
            return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

        return ResumableDataLoader(
            _TaskBatches(self.loaded, self.tokenizer.pad_token_id), sampler, progress, batch_size=None,
            collate_fn=_identity, num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
        )

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        h = self.hparams
        pad = self.tokenizer.pad_token_id
        return [
            DataLoader(t.splits[split], batch_size=h.eval_batch_size or h.batch_size, num_workers=h.num_workers,
                       collate_fn=partial(collate_task, pad_id=pad, task_type=t.task_type, name=t.spec.name))
            for t in self.loaded if split in t.splits
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")
