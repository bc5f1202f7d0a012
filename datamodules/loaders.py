"""A training DataLoader that resumes mid-epoch exactly, shared by the suite's datamodules.

Each epoch's order is a function of (seed, epoch) through a seeded :class:`DistributedSampler` (used on one
process too; Lightning keeps it and calls ``set_epoch``). The loader implements ``state_dict`` /
``load_state_dict``, which Lightning saves in checkpoints: it records how many batches of the current epoch
the training loop has processed, and on resume the sampler skips exactly those, so a resumed run sees the
same batches in the same order as an uninterrupted one.

Lightning restores that state only into a loader it builds after the checkpoint's loops are restored
(``FitLoop.setup_data``): anything that builds the training loader earlier (``trainer.estimated_stepping_batches``
in ``configure_optimizers`` or ``on_fit_start``) makes it drop the state silently. The suite never does
(``core.optim`` resolves the step count lazily); ``tests/adversarial/test_resume.py`` holds every module to it.
The samplers draw an epoch's order lazily, at the first batch, and a restored state sets the sampler's epoch
too, so a loader iterated before Lightning's ``set_epoch`` (worker prefetch) still resumes the right epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class SkippingSampler(DistributedSampler, ABC):
    """Base of the resumable samplers: ``skip_next(epoch, n)`` leaves out the first ``n`` items of ``epoch``.

    A subclass gives this rank's items of ``self.epoch`` in order (:meth:`epoch_items`). The order is drawn when the
    first item is asked for, after Lightning's ``set_epoch``; a skip applies to the next iteration of its epoch.
    """

    _skip: tuple[int, int] | None = None  # (epoch, items to skip)

    def skip_next(self, epoch: int, n: int) -> None:
        self._skip = (epoch, n)

    @abstractmethod
    def epoch_items(self) -> list[Any]:
        """This rank's items of ``self.epoch``, in order."""

    def __iter__(self) -> Iterator[Any]:
        items = self.epoch_items()
        if self._skip is not None and self._skip[0] <= self.epoch:  # an earlier epoch's skip is stale: dropped
            epoch, n = self._skip
            self._skip = None
            if epoch == self.epoch:
                items = items[n:]
        yield from items


class ResumableSampler(SkippingSampler):
    """:class:`DistributedSampler` over example indices that can skip the first ``n`` of one given epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)

    def epoch_items(self) -> list[int]:
        return list(DistributedSampler.__iter__(self))


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`SkippingSampler`; ``progress()`` returns the batches processed this epoch.

    With ``batch_size=None`` the sampler yields whole batches (multitask's task-balanced sampler), so a skipped
    batch is one sampler item; otherwise it is ``batch_size`` items.
    """

    def __init__(self, dataset: Dataset, sampler: SkippingSampler, progress: Callable[[], int], **kwargs: Any):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": int(self._progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # The epoch too: Lightning creates the iterator (and workers prefetch from it) before its set_epoch.
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip_next(state["epoch"], state["batches"] * (self.batch_size or 1))


def resumable_train_loader(datamodule: Any, dataset: Dataset, shuffle: bool, seed: int, **kwargs: Any) -> DataLoader:
    """The training loader of ``datamodule`` (a LightningDataModule attached to a trainer, or not)."""
    trainer = datamodule.trainer
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)

    def progress() -> int:
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    return ResumableDataLoader(dataset, sampler, progress, **kwargs)


class SplitLoaders:
    """DataModule mixin: the resumable training loader and plain evaluation loaders over ``self.datasets``.

    The datamodule provides ``datasets`` (split -> examples), ``_collate()`` and the hyperparameters ``batch_size``,
    ``eval_batch_size``, ``shuffle``, ``seed`` and ``num_workers``; an absent evaluation split gives no loader.
    """

    datasets: dict[str, Any]  # split -> examples, from the datamodule
    _collate: Callable[[], Callable[[list[Any]], Any]]  # the datamodule's method returning its collate function

    def train_dataloader(self) -> DataLoader:
        h = self.hparams  # type: ignore[attr-defined]
        return resumable_train_loader(
            self, self.datasets["train"], shuffle=h.shuffle, seed=h.seed, batch_size=h.batch_size,
            collate_fn=self._collate(), num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader | list:
        if split not in self.datasets:
            return []
        h = self.hparams  # type: ignore[attr-defined]
        return DataLoader(self.datasets[split], batch_size=h.eval_batch_size or h.batch_size,
                          collate_fn=self._collate(), num_workers=h.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        """``lm-suite predict`` runs over the test split, else the validation split."""
        return self._eval_loader("test" if "test" in self.datasets else "val")
