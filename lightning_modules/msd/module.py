"""MSD: a multimodal student distilled from a frozen teacher with modality-specific KD terms and saliency weights.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021. The
student (a :class:`MultimodalClassifier`, smaller than the teacher) is trained on

    L = task_weight * task(s, y) + kd_weight * KD(s, t) + mean_i sum_m w_{i,m} KD(s_m, t_m)_i

where ``s_m`` / ``t_m`` are the student's and teacher's logits on the input holding only modality m (image only,
text only: ``modality.views``), KD is softmax KL with temperature (sigmoid-based for multi-label data) and the
weights ``w`` come from the teacher's per-instance modality saliency (:mod:`lightning_modules.msd.loss`) by the
scheme that ``weighting`` names, one object per scheme (:mod:`lightning_modules.msd.weighting`):

- ``none``: plain KD (task + KD on the full input; no modality terms): the baseline MSD is compared against;
- ``uniform`` / ``dataset`` / ``instance``: fixed functions of the saliencies (``dataset`` uses each modality's mean
  saliency over the training rows, computed once at setup);
- ``learned``: a :class:`~lightning_modules.msd.bilevel.WeightNet` maps saliency features (KL and true-class drop per
  modality) to the weights and is fitted by one-step-lookahead bilevel optimisation on held-out batches
  (``data.heldout_fraction``), with Lightning manual optimisation; DDP-safe (see :mod:`lightning_modules.msd.bilevel`).
  The network is this module's ``weight_net``; its optimiser and held-out position are checkpointed as ``msd_meta``.

The teacher (``teacher``: an exported folder or a ``.ckpt`` of a :class:`MultimodalClassifier`) is frozen, in eval
mode, and never written into the student's checkpoints (it is held outside the module tree). With
``teacher_outputs="cached"`` (default) its outputs on every training row are computed once at setup, or read from
``cache_dir`` (:mod:`lightning_modules.msd.teacher`), and the teacher is dropped: training runs no teacher
forward. ``live`` runs it on every batch. When ``teacher`` does not exist and ``teacher_recipe`` names a training
config, that config is trained first (``lm-suite fit --config teacher_recipe``; it must export to ``teacher``).

The three views go through the student as one batch of 3B rows: a student with BatchNorm (a timm CNN) pools their
statistics, the image-only and text-only rows included; the default student (a ViT) uses LayerNorm. The teacher recipe
runs on rank 0 while the other ranks wait: under DDP train the teacher first when it takes longer than the process
group's timeout.

Sharded training (FSDP2, ``configs/trainer/fsdp.yaml``): the student's text encoder is sharded, its image encoder,
fusion and head stay whole on each rank (:meth:`MultimodalClassifier.configure_model`). The teacher is not: it stays
outside the module tree, frozen and whole on each rank, and is only used to fill the output cache at setup (each rank
its shard of the rows) or, ``live``, for a no-grad forward per batch. ``weighting: learned`` cannot be sharded (its
lookahead step takes the whole student on each rank) and is refused in one line when the trainer is made.

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
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.checkpointing import CLI_OPT_IN
from core.errors import ConfigError
from core.losses import kd_sigmoid, kd_softmax, task_loss
from core.optim import configure_adamw
from core.shard_cache import gather_rows, load_or_compute
from lightning_modules.msd.classifier import MultimodalClassifier
from lightning_modules.msd.loss import msd_loss
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
from lightning_modules.msd.weighting import MODALITIES, WeightingName, make_weighting


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
        weighting: WeightingName = "instance",
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
        choices = {"teacher_outputs": ("cached", "live"), "saliency": ("kl", "prob_drop"),
                   "image_removal": ("zero", "blank"), "text_removal": ("empty", "mask")}
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
        # The one reading of `weighting`: a plain object, so only what trains (its `net`) enters the module's state.
        self.scheme = make_weighting(h.weighting, h.saliency, h.weight_temperature, h.meta_lr, h.meta_inner_lr,
                                     h.meta_every, h.weight_net_hidden, seed=h.init_seed + 7)
        self.automatic_optimization = not self.scheme.manual_optimization
        self.weight_net = self.scheme.net  # registered (learned): trains, checkpoints as `weight_net.*`, moves along
        self.teacher: _Teacher | None = None
        self._saliencies: list[Tensor] = []  # this epoch's (B, M) teacher saliencies, for the histograms

    @property
    def supports_sharding(self) -> bool:  # type: ignore[override]
        """FSDP2 shards the student's text encoder, except under ``learned`` weights, whose lookahead step needs the
        whole student on each rank: :func:`core.strategies.check_sharding` then refuses the run in one line when
        the trainer is made (:attr:`sharding_refusal`), before the teacher or the data load."""
        return not self.scheme.whole_student

    @property
    def sharding_refusal(self) -> str:
        return (f"weighting={self.hparams.weighting} needs the whole student on each rank for its lookahead step "
                "(a functional_call over all its parameters)")

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
        self._check_data_and_trainer(dm)
        # The teacher folder's own trust_remote_code counts for nothing: this run's --model.trust_remote_code decides.
        teacher = MultimodalClassifier.load(teacher_path(h.teacher, h.teacher_recipe, trainer.strategy),
                                            trust_remote_code=bool(h.get("trust_remote_code")), how=CLI_OPT_IN)
        for p in teacher.parameters():
            p.requires_grad_(False)
        check_teacher_data(teacher, dm)
        settings = TeacherSettings.of(teacher, dm, h.image_removal, h.text_removal)
        mismatch = self._live_mismatch(teacher, dm)
        live = h.teacher_outputs == "live"
        if live and mismatch:
            raise ConfigError(f"{mismatch}: a live teacher sees the student's batches; use teacher_outputs=cached "
                              "and lm-suite teacher-cache")
        # A live teacher with `dataset` weights still takes its mean saliencies from the (cached) outputs.
        outputs = self._cached_outputs(teacher, dm, settings, mismatch) \
            if not live or self.scheme.needs_training_outputs else None
        self.scheme.setup(dm, outputs, self.global_rank, trainer.world_size)
        # Cached: training runs no teacher forward, the teacher is dropped. Live: the outputs are not kept.
        self.teacher = _Teacher(teacher, settings, None) if live else _Teacher(None, settings, outputs)

    def _cached_outputs(self, teacher: MultimodalClassifier, dm: Any, settings: TeacherSettings,
                        mismatch: str | None) -> TeacherOutputs:
        """The teacher's outputs on every training row: read from ``cache_dir``, or computed (rank shards) and
        saved there."""
        h, strategy = self.hparams, self.trainer.strategy
        meta = cache_metadata(teacher, dm.fingerprint("train"), settings)
        path = cache_file(h.cache_dir, meta)
        if mismatch and not strategy.broadcast(path.exists(), src=0):
            raise ConfigError(f"{mismatch}: cache its outputs first (lm-suite teacher-cache "
                              "with this run's flags)")
        logits, hit = load_or_compute(strategy, path, "logits", lambda: self._compute_outputs(teacher, dm, settings),
                                      meta)
        rank_zero_info(f"teacher outputs {'read from' if hit else 'cached in'} {path}")
        rows = len(dm.examples("train"))
        if logits.shape[-1] != dm.num_labels or logits.shape[0] != rows:
            raise ConfigError(f"{path}: cached for {logits.shape[0]} rows of {logits.shape[-1]} classes, the data has "
                              f"{rows} rows of {dm.num_labels}")
        return TeacherOutputs(logits)

    def _check_data_and_trainer(self, dm: Any) -> None:
        self.scheme.check(dm, self.trainer)  # e.g. learned: held-out rows, the whole student per rank, no fp16
        if dm.hparams.horizontal_flip and self.hparams.teacher_outputs == "cached":
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

    def on_fit_start(self) -> None:
        if self.teacher.model is not None:
            self.teacher.model.to(self.device).eval()
        if self.teacher.outputs is not None:
            self.teacher.outputs.to(self.device)  # lookups by the batch's index, no host transfer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self.scheme.state_dict()  # learned: {"optimizer", "heldout_used"}; the others keep none
        if state:
            checkpoint["msd_meta"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.scheme.load_state_dict(checkpoint.get("msd_meta") or {})

    # ------------------------------------------------------------------------------------------ objective
    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What both models see: the three views stacked (3B rows), or the full input alone (B rows) for plain KD."""
        if not self.scheme.modality_terms:
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels, scheme = batch["labels"], self.scheme
        inputs = self._inputs(batch)
        teacher = self._teacher_logits(batch, inputs)  # (3, B, L), or (1, B, L)
        # (B, M) logged, (B, F) the scheme's input; none without the single-modality views (a live plain-KD teacher)
        saliency, features = (None, None) if teacher.shape[0] == 1 else \
            scheme.features(teacher, labels, self.hparams.multi_label)
        meta = scheme.meta_due(batch_idx)
        # The meta step differentiates through the student's forward twice: no fused attention kernel can.
        with sdpa_kernel(SDPBackend.MATH) if meta else nullcontext():
            out = self.net(inputs)  # (3B, L), or (B, L) for plain KD
        student = out.view(-1, labels.shape[0], out.shape[-1])  # (3, B, L), or (1, B, L)
        if meta:  # reuses `student`, whose graph reaches the student's parameters: no second training forward
            scheme.meta_step(self, lambda w: self._loss(student, teacher, labels, w)[0], features)
        weights = None if features is None else scheme.weights(features)  # (B, M) detached; None: plain KD
        loss, parts = self._loss(student, teacher, labels, weights)
        if not self.automatic_optimization:
            self._student_step(loss)
        self._log_step(loss, parts, saliency, weights, labels.shape[0])
        return loss

    def _student_step(self, loss: Tensor) -> None:
        """Manual optimisation (``learned``): the student's step with the weights detached."""
        opt = self.optimizers()
        opt.zero_grad()
        # The weight network takes no part in this backward; a zero term gives its parameters (zero) gradients so
        # that DDP, which reduces every registered parameter, does not wait for them.
        owned = self.weight_net.parameters() if self.weight_net is not None else ()
        self.manual_backward(loss + 0.0 * sum(p.sum() for p in owned))
        opt.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _log_step(self, loss: Tensor, parts: dict[str, Tensor], saliency: Tensor | None, weights: Tensor | None,
                  batch_size: int) -> None:
        # Means over each rank's rows, averaged over the ranks (equal batches): the global batch's, as one process logs.
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        logged = dict(parts)
        for m, name in enumerate(MODALITIES):
            if saliency is not None:
                logged[f"saliency_{name}"] = saliency[:, m].mean()
            if weights is not None:
                logged[f"weight_{name}"] = weights[:, m].mean()
        self.log_dict({f"train/{k}": v for k, v in logged.items()}, batch_size=batch_size, sync_dist=True)
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
