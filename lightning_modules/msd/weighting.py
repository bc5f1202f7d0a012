"""MSD's weighting schemes: one object per ``weighting`` value, all answering ``weights(features) -> (B, M)``.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021, weight
each instance's modality-specific KD terms by the teacher's saliency of that modality. :class:`~.module.MSD` builds
one scheme from its ``weighting`` string (:func:`make_weighting`, the only place that reads it) and, per step, asks

    saliency, features = scheme.features(teacher, labels, multi_label)  # (B, M) logged; (B, F) what weights read
    weights = scheme.weights(features)                                   # (B, M), or None: plain KD

- ``none`` (:class:`PlainKD`): no modality terms, task + KD on the full input: the baseline MSD is compared against;
- ``uniform`` (:class:`Uniform`): 1 for every term;
- ``dataset`` (:class:`Dataset`): from each modality's mean saliency over the training rows, computed at setup;
- ``instance`` (:class:`Instance`): a softmax of each instance's saliencies;
- ``learned`` (:class:`Learned`): a :class:`~.bilevel.WeightNet` on both saliencies (KL and true-class drop per
  modality), fitted by one-step-lookahead bilevel optimisation on held-out batches between the student's steps.

The formulas are :mod:`~.loss`'s and :mod:`~.bilevel`'s (pure, with their citations); a scheme holds the state
around them (the dataset means; the weight network, its optimiser, the held-out batches and their checkpoint state)
and its own checks. Schemes are plain objects, not modules: what trains (``Learned.net``) the module registers as its
``weight_net``, so it moves, checkpoints and syncs under DDP with the student.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call

from core.backbones import seeded
from core.errors import ConfigError
from core.losses import task_loss
from core.strategies import whole_model_on_each_rank
from lightning_modules.msd.bilevel import WeightNet, average_across_ranks, lookahead_grads
from lightning_modules.msd.loss import (
    SaliencyKind,
    dataset_weights,
    instance_weights,
    modality_saliency,
    uniform_weights,
)

if TYPE_CHECKING:
    from lightning_modules.msd.teacher import TeacherOutputs

WeightingName = Literal["none", "uniform", "dataset", "instance", "learned"]
MODALITIES = ("image", "text")


class WeightingScheme(ABC):
    """How the modality KD terms are weighted. Subclasses override :meth:`weights` and, where they need them, the
    hooks (checks, setup, meta step, checkpoint state); the defaults are those of a stateless scheme."""

    modality_terms: ClassVar[bool] = True  # False: plain KD, the models see the full input only
    manual_optimization: ClassVar[bool] = False  # True: the scheme steps an optimiser of its own inside the step
    needs_training_outputs: ClassVar[bool] = False  # True: the teacher's outputs on every row, even when it is live
    whole_student: ClassVar[bool] = False  # True: needs every parameter of the student on each rank (no sharding)
    net: nn.Module | None = None  # what trains with the student (the module registers it as ``weight_net``)

    def __init__(self, saliency: SaliencyKind = "kl") -> None:
        self.saliency = saliency

    def check(self, dm: Any, trainer: Any) -> None:
        """Refuse data or a trainer the scheme cannot train with, before the teacher loads."""
        if "heldout" in dm.datasets:
            rank_zero_warn(f"data.heldout_fraction sets {len(dm.datasets['heldout'])} training rows aside, which only "
                           "weighting=learned uses")

    def setup(self, dm: Any, outputs: TeacherOutputs | None, rank: int, world_size: int) -> None:  # noqa: B027
        """At every fit, after the teacher's outputs on the training rows are known (None: a live teacher)."""

    def features(self, teacher: Tensor, labels: Tensor, multi_label: bool) -> tuple[Tensor, Tensor]:
        """The teacher's saliency (B, M) of the configured kind (logged) and the features (B, F) :meth:`weights`
        reads, from the teacher's logits (3, B, L) on the full, image-only and text-only inputs; here both are the
        saliency."""
        saliency = modality_saliency(teacher[0], teacher[1:], labels, self.saliency, multi_label)  # (B, M)
        return saliency, saliency

    @abstractmethod
    def weights(self, features: Tensor) -> Tensor | None:
        """The modality terms' weights (B, M), detached, from the features (B, F); None: no modality terms."""

    def meta_due(self, batch_idx: int) -> bool:
        """Whether this batch takes a meta step (:meth:`meta_step`) before its weights are asked for."""
        return False

    def meta_step(self, module: Any, train_loss: Callable[[Tensor], Tensor], features: Tensor) -> None:
        """Update the scheme from this batch; only schemes whose :meth:`meta_due` can be true have one."""
        raise RuntimeError(f"{type(self).__name__} takes no meta step (its meta_due is never true)")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the scheme beyond ``net``'s parameters (empty: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (a no-op hook by default)
        """Restore :meth:`state_dict`'s output (empty for a checkpoint written without this scheme)."""


class PlainKD(WeightingScheme):
    """``none``: no modality terms. The models see only the full input and the loss is task + KD; with cached
    teacher outputs the saliency is still logged."""

    modality_terms = False

    def weights(self, features: Tensor) -> None:
        return None


class Uniform(WeightingScheme):
    """``uniform``: 1 for every modality term (:func:`~.loss.uniform_weights`)."""

    def weights(self, features: Tensor) -> Tensor:
        return uniform_weights(features)  # (B, M)


class Dataset(WeightingScheme):
    """``dataset``: one weight per modality for every instance, ``M * s̄_m / sum s̄`` from each modality's mean
    saliency over the training rows (held-out rows excluded), computed at every fit (:func:`~.loss.dataset_weights`);
    not checkpointed, since it follows from the teacher and the data."""

    needs_training_outputs = True

    def __init__(self, saliency: SaliencyKind = "kl", mean: Tensor | None = None) -> None:
        super().__init__(saliency)
        self.mean_saliency: Tensor | None = None  # (M,)
        self._weights: Tensor | None = None  # (M,), on the batches' device after the first call
        if mean is not None:
            self.set_mean(mean)

    def set_mean(self, mean: Tensor) -> None:
        """Fix the mean saliencies (M,) the weights come from."""
        self.mean_saliency = mean.float()
        self._weights = dataset_weights(self.mean_saliency)

    def setup(self, dm: Any, outputs: TeacherOutputs | None, rank: int, world_size: int) -> None:  # noqa: B027
        examples = dm.datasets["train"].examples
        index = torch.tensor([e.index for e in examples])
        labels = torch.tensor([e.label for e in examples], dtype=torch.float32 if dm.multi_label else torch.long)
        t = outputs.lookup(index)  # (3, N, L)
        self.set_mean(modality_saliency(t[0], t[1:], labels, self.saliency, dm.multi_label).mean(0))  # (M,)
        rank_zero_info(f"mean teacher saliency (image, text): {self.mean_saliency.tolist()}")

    def weights(self, features: Tensor) -> Tensor:
        if self._weights is None:
            raise ValueError("the 'dataset' scheme needs each modality's mean saliency over the training set")
        if self._weights.device != features.device:
            self._weights = self._weights.to(features.device)  # once: no host transfer per step
        return self._weights.expand(features.shape[0], -1)  # (B, M)


class Instance(WeightingScheme):
    """``instance``: ``M * softmax_m(s_{i,m} / temperature)`` per instance (:func:`~.loss.instance_weights`)."""

    def __init__(self, saliency: SaliencyKind = "kl", temperature: float = 1.0) -> None:
        super().__init__(saliency)
        self.temperature = temperature

    def weights(self, features: Tensor) -> Tensor:
        return instance_weights(features, self.temperature)  # (B, M)


def cycle_batches(loader: Any, start: int) -> Iterator[Any]:
    """``loader``'s batches without end, from the ``start``-th on (a resumed run continues where it stopped); each
    pass reshuffled through its sampler's epoch."""
    epoch, skip = divmod(start, len(loader))
    while True:
        loader.sampler.set_epoch(epoch)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        yield from batches
        epoch, skip = epoch + 1, 0


class Learned(WeightingScheme):
    """``learned``: weights from a :class:`~.bilevel.WeightNet` on both saliencies of each modality (KL and
    true-class drop, (B, 2M)), fitted by a one-step-lookahead bilevel step (:func:`~.bilevel.lookahead_grads`) on a
    held-out batch every ``meta_every`` batches, with its own Adam; the student then steps on the updated weights,
    detached, under Lightning's manual optimisation.

    Checkpoint state (:meth:`state_dict`): the Adam state (``optimizer``) and the held-out batches drawn so far
    (``heldout_used``), so that a resumed run continues both where it stopped; the network's parameters are the
    module's ``weight_net.*``.

    Args:
        saliency: the logged saliency's kind (the network reads both).
        lr: the network's Adam learning rate (``meta_lr``).
        inner_lr: the virtual SGD step's size (``meta_inner_lr``; None: the student's current learning rate).
        every: a meta step every that many batches (``meta_every``).
        hidden: the network's width (``weight_net_hidden``).
        seed: seeds the network's initialisation.
    """

    manual_optimization = True
    whole_student = True  # the lookahead step is a functional_call over all the student's parameters

    def __init__(self, saliency: SaliencyKind = "kl", lr: float = 1e-2, inner_lr: float | None = None,
                 every: int = 1, hidden: int = 16, seed: int | None = None) -> None:
        super().__init__(saliency)
        self.lr, self.inner_lr, self.every = lr, inner_lr, every
        with seeded(seed):
            self.net = WeightNet(2 * len(MODALITIES), len(MODALITIES), hidden)
        self.optimizer: torch.optim.Optimizer | None = None  # made at the first meta step
        self._restored: dict[str, Any] | None = None  # a checkpoint's optimiser state, loaded into it then
        self.loader: Any = None  # the held-out rows of this rank, from the datamodule at setup
        self.heldout: Iterator[Any] | None = None  # an endless iterator over them, made at the first draw
        self.heldout_used = 0  # held-out batches drawn so far

    def check(self, dm: Any, trainer: Any) -> None:
        if "heldout" not in dm.datasets:
            raise ConfigError("weighting=learned fits its weights on held-out rows: set data.heldout_fraction "
                              "(e.g. 0.1)")
        if not whole_model_on_each_rank(trainer.strategy):
            raise ConfigError("weighting=learned needs the whole student on each rank for its lookahead step: "
                              f"one device or DDP, not {type(trainer.strategy).__name__}")
        if str(trainer.precision) in ("16-mixed", "16-true"):
            raise ConfigError("weighting=learned takes float32 or bfloat16: its meta-gradients are not loss-scaled "
                              f"(precision {trainer.precision})")

    def setup(self, dm: Any, outputs: TeacherOutputs | None, rank: int, world_size: int) -> None:  # noqa: B027
        self.loader, self.heldout = dm.heldout_dataloader(rank, world_size), None

    def features(self, teacher: Tensor, labels: Tensor, multi_label: bool) -> tuple[Tensor, Tensor]:
        features = torch.cat([modality_saliency(teacher[0], teacher[1:], labels, kind, multi_label)
                              for kind in ("kl", "prob_drop")], dim=-1)  # (B, 2M): kl, prob_drop
        saliency = features.view(-1, 2, len(MODALITIES))[:, 0 if self.saliency == "kl" else 1]  # (B, M)
        return saliency, features

    def weights(self, features: Tensor) -> Tensor:
        return self.net(features).detach()  # (B, M)

    def meta_due(self, batch_idx: int) -> bool:
        return batch_idx % self.every == 0

    def next_heldout(self) -> Any:
        """The next held-out batch (on the host), continuing from ``heldout_used``."""
        if self.heldout is None:
            self.heldout = cycle_batches(self.loader, self.heldout_used)
        batch = next(self.heldout)
        self.heldout_used += 1
        return batch

    def meta_optimizer(self) -> torch.optim.Optimizer:
        """The network's Adam, made at the first meta step (after any checkpoint was restored, whatever the
        strategy's order of hooks) with the restored state."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            if self._restored is not None:
                self.optimizer.load_state_dict(self._restored)
        return self.optimizer

    def meta_step(self, module: Any, train_loss: Callable[[Tensor], Tensor], features: Tensor) -> None:
        """One bilevel update of the network on a held-out batch.

        ``train_loss(weights)``: the training loss under these weights (B, M), from student outputs already computed
        from the student's current parameters (their graph reaches them), so the meta step adds no forward on the
        training batch. ``module``: the MSD module, for its student ``net``, optimiser, device, precision and
        logger. Under DDP each rank steps virtually on its own batch and the network's gradients are averaged."""
        held = module.trainer.precision_plugin.convert_input(
            module.transfer_batch_to_device(self.next_heldout(), module.device, 0))
        student, multi_label = module.net, module.hparams.multi_label
        params = {n: p for n, p in student.named_parameters() if p.requires_grad}
        inner_lr = self.inner_lr or module.optimizers().param_groups[0]["lr"]

        def heldout_loss(p: dict[str, Tensor]) -> Tensor:
            return task_loss(functional_call(student, p, (held,)), held["labels"], multi_label)[0]

        meta = list(self.net.parameters())
        grads, held_loss = lookahead_grads(params, lambda _: train_loss(self.net(features)), heldout_loss, meta,
                                           inner_lr)
        grads = average_across_ranks(grads)
        if bool(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all()):  # an overflow must not poison it
            for p, g in zip(meta, grads, strict=True):
                p.grad = g
            self.meta_optimizer().step()
            self.meta_optimizer().zero_grad(set_to_none=True)
        module.log("train/heldout_loss", held_loss, batch_size=held["labels"].shape[0])

    def state_dict(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict() if self.optimizer is not None else self._restored
        return {"optimizer": optimizer, "heldout_used": self.heldout_used}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (a no-op hook by default)
        self._restored, self.optimizer = state.get("optimizer"), None
        self.heldout_used, self.heldout = int(state.get("heldout_used", 0)), None


def make_weighting(name: str, saliency: SaliencyKind = "kl", weight_temperature: float = 1.0, meta_lr: float = 1e-2,
                   meta_inner_lr: float | None = None, meta_every: int = 1, weight_net_hidden: int = 16,
                   seed: int | None = None) -> WeightingScheme:
    """The scheme named by MSD's ``weighting`` (one of :data:`WeightingName`), built from MSD's hyperparameters of
    the same names, each scheme taking those it uses; ``seed`` seeds the learned scheme's network."""
    schemes: dict[str, Callable[[], WeightingScheme]] = {
        "none": lambda: PlainKD(saliency),
        "uniform": lambda: Uniform(saliency),
        "dataset": lambda: Dataset(saliency),
        "instance": lambda: Instance(saliency, weight_temperature),
        "learned": lambda: Learned(saliency, meta_lr, meta_inner_lr, meta_every, weight_net_hidden, seed),
    }
    if name not in schemes:
        raise ConfigError(f"weighting must be one of {', '.join(schemes)}; got {name!r}")
    return schemes[name]()
