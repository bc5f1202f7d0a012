"""MSD: a multimodal student distilled from a frozen teacher with modality-specific KD terms and saliency weights.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021. The
student (a :class:`MultimodalClassifier`, smaller than the teacher) is trained on

    L = task_weight * task(s, y) + kd_weight * KD(s, t) + mean_i sum_m w_{i,m} KD(s_m, t_m)_i

where ``s_m`` / ``t_m`` are the student's and teacher's logits on the input holding only modality m (image only,
text only: ``modality.views``), KD is softmax KL with temperature (sigmoid-based for multi-label data) and the
weights ``w`` come from the teacher's per-instance modality saliency (``losses/msd.py``) by ``weighting``:

- ``none``: plain KD (task + KD on the full input; no modality terms): the baseline MSD is compared against;
- ``uniform`` / ``dataset`` / ``instance``: the schemes of ``losses.msd.modality_weights`` (``dataset`` uses each
  modality's mean saliency over the training rows, computed once at setup);
- ``learned``: a :class:`~lightning_modules.msd.bilevel.WeightNet` maps saliency features (KL and true-class drop per
  modality) to the weights and is fitted by one-step-lookahead bilevel optimisation on held-out batches
  (``data.heldout_fraction``), with Lightning manual optimisation; DDP-safe (see :mod:`lightning_modules.msd.bilevel`).

The teacher (``teacher``: an exported folder or a ``.ckpt`` of a :class:`MultimodalClassifier`) is frozen, in eval
mode, and never written into the student's checkpoints (it is held outside the module tree). With
``teacher_outputs="cached"`` (default) its outputs on every training row are computed once at setup, or read from
``cache_dir`` (:mod:`lightning_modules.msd.teacher`), and the teacher is dropped: training runs no teacher
forward. ``live`` runs it on every batch. When ``teacher`` does not exist and ``teacher_recipe`` names a training
config, that config is trained first (``train.py fit --config teacher_recipe``; it must export to ``teacher``).

The three views go through the student as one batch of 3B rows: a student with BatchNorm (a timm CNN) pools their
statistics, the image-only and text-only rows included; the default student (a ViT) uses LayerNorm. The teacher recipe
runs on rank 0 while the other ranks wait: under DDP train the teacher first when it takes longer than the process
group's timeout.

Saliencies are logged per epoch as histograms (TensorBoard when that is the logger; always appended to
``<log_dir>/saliency_histograms.jsonl``). ``callbacks.ExportModel`` saves the distilled student alone (config +
safetensors), which ``MultimodalClassifier.load`` reads without the teacher.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.backbones import seeded
from core.errors import ConfigError
from core.losses import kd_sigmoid, kd_softmax, task_loss
from core.optim import configure_adamw
from core.shard_cache import gather_rows, load_or_compute
from core.strategies import whole_model_on_each_rank
from lightning_modules.msd.bilevel import WeightNet, average_across_ranks, lookahead_grads
from lightning_modules.msd.classifier import MultimodalClassifier
from lightning_modules.msd.loss import dataset_weights, modality_saliency, modality_weights, msd_loss
from lightning_modules.msd.modality import ImageMode, TextMode, views
from lightning_modules.msd.teacher import (
    TeacherOutputs,
    TeacherSettings,
    cache_file,
    cache_metadata,
    check_teacher_data,
    compute_outputs,
    teacher_path,
)

Weighting = Literal["none", "uniform", "dataset", "instance", "learned"]
MODALITIES = ("image", "text")


class _Teacher:
    """The frozen teacher and/or its cached outputs; a plain object, so nothing of it enters the module's state."""

    def __init__(self, model: MultimodalClassifier | None, settings: TeacherSettings,
                 outputs: TeacherOutputs | None) -> None:
        self.model, self.settings, self.outputs = model, settings, outputs


class MSD(MultimodalClassifier):
    """Modality-specific distillation of a frozen multimodal teacher into this (student) classifier.

    Args:
        teacher: the teacher, an exported folder (``callbacks.ExportModel``) or a ``.ckpt`` of a MultimodalClassifier.
        teacher_recipe: a training config that makes ``teacher`` when it is missing (run once, then reused).
        teacher_outputs: ``cached`` (computed once per teacher + data + settings, read from ``cache_dir`` after) or
            ``live`` (a teacher forward on every batch).
        cache_dir: where cached teacher outputs are kept.
        weighting: ``none`` (plain KD), ``uniform``, ``dataset``, ``instance`` or ``learned`` (module docstring).
        saliency: ``kl`` or ``prob_drop`` (true-class probability drop) of the teacher when a modality is removed.
        weight_temperature: the ``instance`` scheme's softmax temperature.
        kd_temperature, task_weight, kd_weight: the KD temperature and the weights of the task and full-input KD terms.
        image_removal, text_removal: how a modality is removed (``zero`` / ``blank`` image, ``empty`` / ``mask`` text).
        meta_lr, meta_inner_lr, meta_every, weight_net_hidden: ``learned``: Adam learning rate of the weight network,
            the virtual SGD step's size (None: the student's current learning rate), a meta step every that many
            batches, the weight network's width.
        histogram_bins: bins of the logged saliency histograms.
        **kwargs: the student's own arguments (:class:`MultimodalClassifier`: backbones, fusion, lr...).
    """

    def __init__(
        self,
        teacher: str = "runs/multimodal_teacher/export",
        teacher_recipe: str | None = None,
        teacher_outputs: Literal["cached", "live"] = "cached",
        cache_dir: str = ".cache/msd_teacher",
        weighting: Weighting = "instance",
        saliency: Literal["kl", "prob_drop"] = "kl",
        weight_temperature: float = 1.0,
        kd_temperature: float = 1.0,
        task_weight: float = 1.0,
        kd_weight: float = 1.0,
        image_removal: ImageMode = "blank",
        text_removal: TextMode = "empty",
        meta_lr: float = 1e-2,
        meta_inner_lr: float | None = None,
        meta_every: int = 1,
        weight_net_hidden: int = 16,
        histogram_bins: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        h = self.hparams
        choices = {"teacher_outputs": ("cached", "live"), "weighting": Weighting.__args__,
                   "saliency": ("kl", "prob_drop"), "image_removal": ("zero", "blank"),
                   "text_removal": ("empty", "mask")}
        for key, allowed in choices.items():
            if h[key] not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {h[key]!r}")
        for key in ("weight_temperature", "kd_temperature", "meta_lr"):
            if not h[key] > 0:
                raise ConfigError(f"{key} must be > 0, got {h[key]}")
        if h.meta_every < 1 or h.weight_net_hidden < 1 or h.histogram_bins < 1:
            raise ConfigError("meta_every, weight_net_hidden and histogram_bins must be >= 1")
        if h.meta_inner_lr is not None and not h.meta_inner_lr > 0:
            raise ConfigError(f"meta_inner_lr must be > 0, got {h.meta_inner_lr}")
        self.learned = h.weighting == "learned"
        self.automatic_optimization = not self.learned
        self.weight_net: WeightNet | None = None
        if self.learned:
            with seeded(h.init_seed + 7):
                self.weight_net = WeightNet(2 * len(MODALITIES), len(MODALITIES), h.weight_net_hidden)
        # (M,), the `dataset` scheme's; recomputed at every fit from the teacher and the data, so not checkpointed
        self.register_buffer("dataset_saliency", torch.zeros(len(MODALITIES)), persistent=False)
        self.teacher: _Teacher | None = None
        self._saliencies: list[Tensor] = []  # this epoch's (B, M) teacher saliencies, for the histograms
        self._heldout_loader: Any = None  # `learned`: the held-out rows, from the datamodule at setup
        self._heldout: Any = None  # an endless iterator over them
        self._heldout_used = 0  # held-out batches drawn so far (checkpointed: a resumed run draws the next ones)
        self._dataset_weights: Tensor | None = None  # (M,), the `dataset` scheme's, fixed at setup
        self._meta_opt: torch.optim.Optimizer | None = None
        self._meta_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------------------- teacher
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # every fit: the data may have changed since the last
            self._prepare_teacher()

    def _prepare_teacher(self) -> None:
        """Check the settings, load the teacher, check it against the data, and fill or read the output cache: all
        before any training step."""
        h, trainer = self.hparams, self.trainer
        dm = trainer.datamodule
        self._check_data_and_strategy(dm, trainer.strategy)
        teacher = MultimodalClassifier.load(teacher_path(h.teacher, h.teacher_recipe, trainer.strategy))
        for p in teacher.parameters():
            p.requires_grad_(False)
        check_teacher_data(teacher, dm)
        settings = TeacherSettings.of(teacher, dm, h.image_removal, h.text_removal)
        mismatch = self._live_mismatch(teacher, dm)
        live = h.teacher_outputs == "live"
        if live and mismatch:
            raise ConfigError(f"{mismatch}: a live teacher sees the student's batches; use teacher_outputs=cached "
                              "and python -m lightning_modules.msd.teacher")
        # A live teacher with `dataset` weights still takes its mean saliencies from the (cached) outputs.
        outputs = self._cached_outputs(teacher, dm, settings, mismatch) if not live or h.weighting == "dataset" \
            else None
        if h.weighting == "dataset":
            self.dataset_saliency.copy_(self._mean_saliency(outputs, dm))
            self._dataset_weights = dataset_weights(self.dataset_saliency)  # (M,)
            rank_zero_info(f"mean teacher saliency (image, text): {self.dataset_saliency.tolist()}")
        # Cached: training runs no teacher forward, the teacher is dropped. Live: the outputs are not kept.
        self.teacher = _Teacher(teacher, settings, None) if live else _Teacher(None, settings, outputs)
        if self.learned:
            self._heldout_loader = dm.heldout_dataloader(self.global_rank, trainer.world_size)

    def _cached_outputs(self, teacher: MultimodalClassifier, dm: Any, settings: TeacherSettings,
                        mismatch: str | None) -> TeacherOutputs:
        """The teacher's outputs on every training row: read from ``cache_dir``, or computed (rank shards) and
        saved there."""
        h, strategy = self.hparams, self.trainer.strategy
        meta = cache_metadata(teacher, dm.fingerprint("train"), settings)
        path = cache_file(h.cache_dir, meta)
        if mismatch and not strategy.broadcast(path.exists(), src=0):
            raise ConfigError(f"{mismatch}: cache its outputs first (python -m lightning_modules.msd.teacher "
                              "with this run's flags)")
        logits, hit = load_or_compute(strategy, path, "logits", lambda: self._compute_outputs(teacher, dm, settings),
                                      meta)
        rank_zero_info(f"teacher outputs {'read from' if hit else 'cached in'} {path}")
        rows = len(dm.examples("train"))
        if logits.shape[-1] != dm.num_labels or logits.shape[0] != rows:
            raise ConfigError(f"{path}: cached for {logits.shape[0]} rows of {logits.shape[-1]} classes, the data has "
                              f"{rows} rows of {dm.num_labels}")
        return TeacherOutputs(logits)

    def _check_data_and_strategy(self, dm: Any, strategy: Any) -> None:
        h = self.hparams
        if self.learned:
            if "heldout" not in dm.datasets:
                raise ConfigError("weighting=learned fits its weights on held-out rows: set data.heldout_fraction "
                                  "(e.g. 0.1)")
            if not whole_model_on_each_rank(strategy):
                raise ConfigError("weighting=learned needs the whole student on each rank for its lookahead step: "
                                  f"one device or DDP, not {type(strategy).__name__}")
            if str(self.trainer.precision) in ("16-mixed", "16-true"):
                raise ConfigError("weighting=learned takes float32 or bfloat16: its meta-gradients are not loss-scaled "
                                  f"(precision {self.trainer.precision})")
        elif "heldout" in dm.datasets:
            rank_zero_warn(f"data.heldout_fraction sets {len(dm.datasets['heldout'])} training rows aside, which only "
                           "weighting=learned uses")
        if dm.hparams.horizontal_flip and h.teacher_outputs == "cached":
            rank_zero_warn("the cached teacher outputs are of unflipped images; with horizontal_flip the student sees "
                           "flipped ones (teacher_outputs=live matches them)")

    def _live_mismatch(self, teacher: MultimodalClassifier, dm: Any) -> str | None:
        """Why the teacher cannot read this datamodule's batches (another tokenizer or image size), or None."""
        if teacher.hparams.image_size != dm.hparams.image_size:
            return f"the teacher takes {teacher.hparams.image_size}px images, the data makes {dm.hparams.image_size}px"
        if teacher.tokenizer.get_vocab() != dm.tokenizer.get_vocab():
            return f"the teacher's tokenizer ({teacher.hparams.text_backbone}) is not the data's"
        return None

    def _compute_outputs(self, teacher: MultimodalClassifier, dm: Any, settings: TeacherSettings) -> Tensor:
        """Teacher logits (N, 3, L) of the training rows: each rank its shard (on its device), gathered."""
        device = self.trainer.strategy.root_device  # setup runs before the module is moved there
        teacher.to(device)
        part = compute_outputs(teacher.net, dm.teacher_loader("train", self.global_rank, self.trainer.world_size),
                               len(dm.examples("train")), settings, dm.tokenizer, device)
        return gather_rows(part)

    def _mean_saliency(self, outputs: TeacherOutputs, dm: Any) -> Tensor:
        """Each modality's mean teacher saliency over the training rows (held-out rows excluded): (M,)."""
        examples = dm.datasets["train"].examples
        index = torch.tensor([e.index for e in examples])
        labels = torch.tensor([e.label for e in examples], dtype=torch.float32 if dm.multi_label else torch.long)
        t = outputs.lookup(index)  # (3, N, L)
        sal = modality_saliency(t[0], t[1:], labels, self.hparams.saliency, dm.multi_label)  # (N, M)
        return sal.mean(0)

    def on_fit_start(self) -> None:
        if self.teacher.model is not None:
            self.teacher.model.to(self.device).eval()
        if self.teacher.outputs is not None:
            self.teacher.outputs.to(self.device)  # lookups by the batch's index, no host transfer
        if self._dataset_weights is not None:
            self._dataset_weights = self._dataset_weights.to(self.device)
        if self.learned:
            self._heldout = self._cycle(self._heldout_loader, self._heldout_used)

    @staticmethod
    def _cycle(loader: Any, start: int) -> Any:
        """Held-out batches without end, from the ``start``-th on (a resumed run continues where it stopped)."""
        epoch, skip = divmod(start, len(loader))
        while True:
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            for _ in range(skip):
                next(batches)
            yield from batches
            epoch, skip = epoch + 1, 0

    def _meta_optimizer(self) -> torch.optim.Optimizer:
        """The weight network's Adam, made at the first meta step (after any checkpoint was restored, whatever the
        strategy's order of hooks) with the restored state."""
        if self._meta_opt is None:
            self._meta_opt = torch.optim.Adam(self.weight_net.parameters(), lr=self.hparams.meta_lr)
            if self._meta_state is not None:
                self._meta_opt.load_state_dict(self._meta_state)
        return self._meta_opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.learned:
            state = self._meta_opt.state_dict() if self._meta_opt is not None else self._meta_state
            checkpoint["msd_meta"] = {"optimizer": state, "heldout_used": self._heldout_used}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("msd_meta") or {}
        self._meta_state, self._meta_opt = meta.get("optimizer"), None
        self._heldout_used = int(meta.get("heldout_used", 0))

    # ------------------------------------------------------------------------------------------ objective
    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What both models see: the three views stacked (3B rows), or the full input alone (B rows) for plain KD."""
        if self.hparams.weighting == "none":
            return batch
        s = self.teacher.settings
        return views(batch, s.image_mode, s.text_mode, self.tokenizer, s.image_mean, s.image_std)

    def _teacher_logits(self, batch: dict[str, Any], inputs: dict[str, Any]) -> Tensor:
        """The teacher's logits (3, B, L) on the full, image-only and text-only inputs (cached: all three); a live
        teacher under plain KD sees only the full input (1, B, L) (no saliency is logged then)."""
        if self.teacher.outputs is not None:
            return self.teacher.outputs.lookup(batch["index"])
        floats = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):  # float32, as when cached
            out = self.teacher.model.net(floats)  # (3B, L) or (B, L)
        return out.float().view(-1, batch["labels"].shape[0], out.shape[-1])

    def _loss(self, student: Tensor, teacher: Tensor, labels: Tensor, weights: Tensor | None
              ) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.hparams
        if weights is None:  # plain KD
            task, _ = task_loss(student[0], labels, h.multi_label)
            kd, _ = (kd_sigmoid if h.multi_label else kd_softmax)(student[0], teacher[0], h.kd_temperature)
            return h.task_weight * task + h.kd_weight * kd, {"task": task.detach(), "kd": kd.detach()}
        return msd_loss(student[0], teacher[0], student[1:], teacher[1:], labels, weights, h.kd_temperature,
                        h.multi_label, h.task_weight, h.kd_weight)

    def _saliency_features(self, teacher: Tensor, labels: Tensor) -> Tensor:
        """(B, 2M): both saliencies of each modality, the learned weight network's input."""
        ml = self.hparams.multi_label
        return torch.cat([modality_saliency(teacher[0], teacher[1:], labels, kind, ml)
                          for kind in ("kl", "prob_drop")], dim=-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        h, labels = self.hparams, batch["labels"]
        inputs = self._inputs(batch)
        teacher = self._teacher_logits(batch, inputs)  # (3, B, L), or (1, B, L)
        features = self._saliency_features(teacher, labels) if self.learned else None  # (B, 2M): kl, prob_drop
        if features is not None:
            saliency = features.view(-1, 2, len(MODALITIES))[:, 0 if h.saliency == "kl" else 1]  # (B, M)
        else:
            saliency = None if teacher.shape[0] == 1 else modality_saliency(
                teacher[0], teacher[1:], labels, h.saliency, h.multi_label)  # (B, M)
        meta = self.learned and batch_idx % h.meta_every == 0
        # The meta step differentiates through the student's forward twice: no fused attention kernel can.
        with sdpa_kernel(SDPBackend.MATH) if meta else nullcontext():
            out = self.net(inputs)  # (3B, L), or (B, L) for plain KD
        student = out.view(-1, labels.shape[0], out.shape[-1])  # (3, B, L), or (1, B, L)
        weights = None
        if self.learned:
            if meta:
                self._meta_step(batch, student, teacher, features)
            weights = self.weight_net(features).detach()  # (B, M), after the meta update
        elif h.weighting == "dataset":
            weights = self._dataset_weights.expand(labels.shape[0], -1)  # (B, M)
        elif h.weighting != "none":
            weights = modality_weights(saliency, h.weighting, h.weight_temperature)
        loss, parts = self._loss(student, teacher, labels, weights)
        if self.learned:
            self._student_step(loss)
        self._log_step(loss, parts, saliency, weights, labels.shape[0])
        return loss

    def _student_step(self, loss: Tensor) -> None:
        """Manual optimisation (``learned``): the student's step with the weights detached."""
        opt = self.optimizers()
        opt.zero_grad()
        # The weight network takes no part in this backward; a zero term gives its parameters (zero) gradients so
        # that DDP, which reduces every registered parameter, does not wait for them.
        self.manual_backward(loss + 0.0 * sum(p.sum() for p in self.weight_net.parameters()))
        opt.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _meta_step(self, batch: dict[str, Any], student: Tensor, teacher: Tensor, features: Tensor) -> None:
        """One bilevel update of the weight network on a held-out batch (:func:`bilevel.lookahead_grads`).

        ``student`` (3, B, L) was computed from the student's current parameters: the training loss reuses it
        (its graph reaches the parameters), so the meta step adds no forward on the training batch."""
        h = self.hparams
        held = self.trainer.precision_plugin.convert_input(self.transfer_batch_to_device(next(self._heldout),
                                                                                         self.device, 0))
        self._heldout_used += 1
        params = {n: p for n, p in self.net.named_parameters() if p.requires_grad}
        inner_lr = h.meta_inner_lr or self.optimizers().param_groups[0]["lr"]

        def train_loss(_: dict[str, Tensor]) -> Tensor:
            return self._loss(student, teacher, batch["labels"], self.weight_net(features))[0]

        def heldout_loss(p: dict[str, Tensor]) -> Tensor:
            return task_loss(functional_call(self.net, p, (held,)), held["labels"], h.multi_label)[0]

        meta = list(self.weight_net.parameters())
        grads, held_loss = lookahead_grads(params, train_loss, heldout_loss, meta, inner_lr)
        grads = average_across_ranks(grads)
        if bool(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all()):  # an overflow must not poison it
            for p, g in zip(meta, grads, strict=True):
                p.grad = g
            self._meta_optimizer().step()
            self._meta_optimizer().zero_grad(set_to_none=True)
        self.log("train/heldout_loss", held_loss, batch_size=held["labels"].shape[0])

    def _log_step(self, loss: Tensor, parts: dict[str, Tensor], saliency: Tensor | None, weights: Tensor | None,
                  batch_size: int) -> None:
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        logged = dict(parts)
        for m, name in enumerate(MODALITIES):
            if saliency is not None:
                logged[f"saliency_{name}"] = saliency[:, m].mean()
            if weights is not None:
                logged[f"weight_{name}"] = weights[:, m].mean()
        self.log_dict({f"train/{k}": v for k, v in logged.items()}, batch_size=batch_size)
        if saliency is not None:
            self._saliencies.append(saliency.detach())  # joined at the epoch's end: no host sync per step

    # --------------------------------------------------------------------------------------- histograms
    def on_train_epoch_end(self) -> None:
        """Each modality's saliency histogram over the epoch's rows (all ranks gathered)."""
        if not self._saliencies:
            return
        local = torch.cat(self._saliencies).to(self.device)  # (N_rank, M)
        self._saliencies = []
        every = self.all_gather(local)  # (world, N, M) or (N, M)
        every = every.reshape(-1, every.shape[-1]).float().cpu()
        log_dir = self.trainer.log_dir  # a collective: every rank asks
        if not self.trainer.is_global_zero:
            return
        record: dict[str, Any] = {"epoch": self.current_epoch, "step": self.global_step}
        for m, name in enumerate(MODALITIES):
            values = every[:, m]
            lo, hi = float(values.min()), float(values.max())
            counts = torch.histc(values, bins=self.hparams.histogram_bins, min=lo, max=hi if hi > lo else lo + 1e-6)
            record[name] = {"min": lo, "max": hi, "mean": float(values.mean()), "counts": counts.long().tolist()}
            for logger in self.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_histogram"):  # TensorBoard
                    experiment.add_histogram(f"saliency/{name}", values, self.global_step)
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(log_dir) / "saliency_histograms.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def configure_optimizers(self) -> Any:
        """AdamW over the student only (the weight network has its own Adam, stepped in the meta step)."""
        return configure_adamw(self, self.optim, params=self.net.parameters())
