"""Image-text classifiers: the teacher and student networks of MSD, and a LightningModule that trains one.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021,
distil a large vision-language classifier into a smaller one. Here teacher and student are one class,
:class:`MultimodalNet`, at different sizes (only the backbone names and widths differ): a timm image encoder
(``create_vision_backbone``), a text encoder (``build_encoder``), a fusion and a linear head.

- ``concat``: the pooled image vector and the pooled text vector (first token or mask-weighted mean) are
  concatenated and go through a one-hidden-layer MLP.
- ``cross_attention``: text tokens attend to the image's patch / feature-map tokens (one token when the timm model
  has only a pooled vector) in one pre-norm ``nn.MultiheadAttention`` block with a feed-forward, then are pooled.

Under FSDP2 the text encoder (a Hugging Face model) is sharded and the rest stays whole on each rank, its batch
norms then normalising over the global batch (:class:`GlobalBatchNorm`): :meth:`MultimodalClassifier.configure_model`.

:class:`MultimodalClassifier` trains one such network on its own (``lm-suite fit --model MultimodalClassifier``),
which is how an MSD teacher is made: cross-entropy (single-label) or BCE (multi-label), metrics ``accuracy``,
``f1_macro`` and ``auroc`` (single-label) or ``f1_micro`` and ``f1_macro`` (multi-label, threshold 0.5).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelF1Score,
)

from core.backbones import build_encoder, check_model_name, create_vision_backbone, load_tokenizer, seeded
from core.checkpointing import check_remote_code, read_checkpoint, saved_hparams
from core.errors import ConfigError
from core.heads import check_first_token_pooling, pool
from core.io import atomic_path
from core.losses import task_loss
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable, whole_model_on_each_rank

Fusion = Literal["concat", "cross_attention"]
Pooling = Literal["cls", "mean"]


class ImageEncoder(nn.Module):
    """A timm model without classifier: ``tokens`` (B, N, D_tok) and ``pooled`` (B, D) features of ``pixel_values``.

    ``img_size`` goes to models that take it (ViTs); others (CNNs) accept any size. One dry forward at build time
    finds the widths and fails early, naming the model, when it cannot take ``image_size`` images. ``tokens_only``
    (cross-attention fusion) freezes the head parameters that the token path never uses.
    """

    def __init__(self, name: str, image_size: int, tokens_only: bool = False, pretrained: bool = False) -> None:
        super().__init__()
        try:
            self.model = create_vision_backbone(name, pretrained=pretrained, img_size=image_size)
        except TypeError:  # the model has no img_size argument
            self.model = create_vision_backbone(name, pretrained=pretrained)
        self.has_tokens = hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                probe = torch.zeros(1, 3, image_size, image_size)
                self.token_dim = self.tokens(probe).shape[-1]
                self.pooled_dim = self.pooled(probe).shape[-1]
        except RuntimeError as e:
            raise ConfigError(f"image backbone {name!r} cannot take {image_size}x{image_size} images: {e}") from e
        self.model.train(was_training)
        if tokens_only and self.has_tokens:
            self._freeze_unused_head(image_size)

    def _freeze_unused_head(self, image_size: int) -> None:
        """Only ``tokens`` is used (cross-attention): parameters that ``forward_features`` never reaches (a timm
        head's norm or conv) get no gradient, which plain DDP refuses; they are frozen instead."""
        self.tokens(torch.zeros(2, 3, image_size, image_size)).float().sum().backward()
        for p in self.model.parameters():
            if p.grad is None:
                p.requires_grad_(False)
            p.grad = None

    def _as_tokens(self, features: Tensor) -> Tensor:
        if features.ndim == 4:  # a feature map
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                return features.flatten(1, 2)  # (B, H*W, C)
            return features.flatten(2).transpose(1, 2)  # (B, H*W, C)
        return features if features.ndim == 3 else features.unsqueeze(1)  # (B, N, D)

    def tokens(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, D_tok): patch tokens (ViT, prefix tokens included) or feature-map cells (CNN)."""
        if not self.has_tokens:
            return self.model(pixel_values).unsqueeze(1)  # (B, 1, D): the pooled vector as one token
        return self._as_tokens(self.model.forward_features(pixel_values))

    def pooled(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D): the model's own pooling (class token or global average)."""
        return self.model(pixel_values)


class TextEncoder(nn.Module):
    """A Hugging Face encoder: hidden states (B, T, H) and the pooled first token or mask-weighted mean (B, H)."""

    def __init__(self, name: str, pooling: Pooling, trust_remote_code: bool, seed: int | None) -> None:
        super().__init__()
        self.model = build_encoder(name, trust_remote_code=trust_remote_code, seed=seed)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's tanh pooler is unused (we pool hidden states): not trained, not DDP'd
        self.pooling, self.dim = pooling, int(self.model.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, H)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch: in training, with more than one process, the statistics are those
    of all ranks' rows together (a differentiable all-reduce of the per-channel sums, then of the centred squares),
    so the output, the gradients and the running statistics are those of one process on the whole batch. PyTorch's
    ``SyncBatchNorm`` does this on GPUs only; this one runs on any backend (gloo included). Evaluation, or one
    process, is plain batch norm. :func:`globalise_batch_norm` turns a model's batch norms into these in place (same
    parameters, buffers and state-dict names)."""

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        from torch.distributed._functional_collectives import all_reduce  # differentiable: sums the gradients too

        self._check_input_dim(input)
        dims = [d for d in range(input.ndim) if d != 1]  # all but the channels
        shape = [1, -1] + [1] * (input.ndim - 2)
        x = input.float()
        count = x.new_tensor([x.numel() // x.shape[1]], dtype=torch.float32)
        world = dist.group.WORLD
        total = all_reduce(torch.cat([x.sum(dims), count]), "sum", world)  # (C + 1,): channel sums, global rows
        n = total[-1]
        mean = total[:-1] / n  # (C,)
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims), "sum", world) / n  # (C,) biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class GlobalBatchNorm1d(GlobalBatchNorm, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(GlobalBatchNorm, nn.BatchNorm2d):
    pass


class GlobalBatchNorm3d(GlobalBatchNorm, nn.BatchNorm3d):
    pass


GLOBAL_BATCH_NORM = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d,
                     nn.BatchNorm3d: GlobalBatchNorm3d}


def globalise_batch_norm(model: nn.Module) -> int:
    """Make every plain batch norm of ``model`` (1d, 2d, 3d) a :class:`GlobalBatchNorm`, in place (its class
    changes; parameters and buffers stay); returns how many. Subclasses with a forward of their own (timm's
    ``BatchNormAct2d``) are left as they are."""
    done = 0
    for m in model.modules():
        if type(m) in GLOBAL_BATCH_NORM:
            m.__class__ = GLOBAL_BATCH_NORM[type(m)]
            done += 1
    return done


class CrossAttentionFusion(nn.Module):
    """Text tokens (queries) attend to image tokens (keys/values); pre-norm residual block + feed-forward."""

    def __init__(self, text_dim: int, image_dim: int, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.query, self.memory = nn.Linear(text_dim, hidden), nn.Linear(image_dim, hidden)
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden)
        )

    def forward(self, text: Tensor, image: Tensor) -> Tensor:
        """text (B, T, D_t), image (B, N, D_i) -> (B, T, hidden)."""
        x = self.query(text)  # (B, T, hidden)
        memory = self.norm_kv(self.memory(image))  # (B, N, hidden)
        x = x + self.attn(self.norm_q(x), memory, memory, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class MultimodalNet(nn.Module):
    """Image encoder + text encoder + fusion + linear head: ``forward(batch) -> logits (B, num_labels)``.

    Build it with :meth:`build` (seeded: one ``seed`` gives one initial network).
    """

    def __init__(self, image: ImageEncoder, text: TextEncoder, num_labels: int, fusion: Fusion = "concat",
                 hidden: int = 128, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.image, self.text, self.fusion_kind = image, text, fusion
        if fusion == "concat":
            self.fusion: nn.Module = nn.Sequential(nn.Linear(image.pooled_dim + text.dim, hidden), nn.GELU(),
                                                   nn.Dropout(dropout))
        elif fusion == "cross_attention":
            if hidden % heads:
                raise ConfigError(f"fusion_hidden={hidden} must be divisible by fusion_heads={heads}")
            self.fusion = CrossAttentionFusion(text.dim, image.token_dim, hidden, heads, dropout)
        else:
            raise ConfigError(f"fusion must be 'concat' or 'cross_attention', got {fusion!r}")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)

    @classmethod
    def build(cls, image_backbone: str, text_backbone: str, num_labels: int, image_size: int = 64,
              fusion: Fusion = "concat", hidden: int = 128, heads: int = 4, dropout: float = 0.1,
              text_pooling: Pooling = "cls", trust_remote_code: bool = False, seed: int = 0,
              image_pretrained: bool = False) -> MultimodalNet:
        with seeded(seed):
            image = ImageEncoder(image_backbone, image_size, fusion == "cross_attention", image_pretrained)
            text = TextEncoder(text_backbone, text_pooling, trust_remote_code, seed=seed + 1)
            return cls(image, text, num_labels, fusion, hidden, heads, dropout)

    def fused(self, batch: dict[str, Any]) -> Tensor:
        """The fused representation (B, hidden) that the head reads."""
        mask = batch["attention_mask"]  # (B, T)
        hidden = self.text(batch["input_ids"], mask, batch.get("token_type_ids"))  # (B, T, D_t)
        if self.fusion_kind == "concat":
            image = self.image.pooled(batch["pixel_values"])  # (B, D_i)
            return self.fusion(torch.cat([image, pool(hidden, mask, self.text.pooling)], dim=-1))  # (B, hidden)
        x = self.fusion(hidden, self.image.tokens(batch["pixel_values"]))  # (B, T, hidden)
        return pool(x, mask, self.text.pooling)  # (B, hidden)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.head(self.dropout(self.fused(batch)))  # (B, num_labels)


class PositiveClassAUROC(BinaryAUROC):
    """Binary AUROC of the positive class's probability, updated with (B, 2) probabilities like the other metrics."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds[:, 1], target)


def classification_metrics(num_labels: int, multi_label: bool) -> MetricCollection:
    """Metrics updated with probabilities (B, L) and labels: states are sums or (AUROC) gathered lists, exact
    under DDP."""
    if multi_label:
        return MetricCollection({
            "f1_micro": MultilabelF1Score(num_labels=num_labels, average="micro", threshold=0.5),
            "f1_macro": MultilabelF1Score(num_labels=num_labels, average="macro", threshold=0.5),
        })
    auroc = PositiveClassAUROC() if num_labels == 2 else MulticlassAUROC(num_classes=num_labels, average="macro")
    return MetricCollection({
        "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
        "f1_macro": MulticlassF1Score(num_classes=num_labels, average="macro"),
        "auroc": auroc,
    })


class MultimodalClassifier(Shardable, LightningModule):
    """An image-text classifier trained on the task loss: a standalone model, and how MSD's teacher is made.

    Args:
        image_backbone: a timm name (``timm:NAME``; ``img_size=image_size`` where the model takes it).
        image_pretrained: load timm's pretrained weights for it (downloaded, or from the Hugging Face cache with
            ``HF_HUB_OFFLINE=1``); off by default: random init, which runs offline.
        text_backbone: a text encoder for ``build_encoder`` (``tiny-bert``, ``hf:<id or folder>``); its tokenizer is
            ``self.tokenizer``, which the datamodule takes.
        image_size: the side of the (square) images.
        fusion, fusion_hidden, fusion_heads: ``concat`` (MLP of that width) or ``cross_attention`` (that width and
            number of heads).
        text_pooling: the text's first token (``cls``; needs a CLS or BOS token) or its mean over the mask.
        dropout: in the fusion and before the head.
        num_labels, multi_label: None = the datamodule's ``num_labels`` / ``multi_label`` at setup (then saved in
            the hyperparameters, so ``load_from_checkpoint`` rebuilds the head); ``multi_label`` None = the
            datamodule's, or False without one.
        label_names: the class names, recorded from the datamodule at setup (MSD checks teacher and student agree).
        lr, weight_decay, warmup_steps, lr_schedule: AdamW and its schedule (``core/optim.py``).
        init_seed: seeds the whole build.
    """

    def __init__(
        self,
        image_backbone: str = "timm:test_vit",
        image_pretrained: bool = False,
        text_backbone: str = "tiny-bert",
        image_size: int = 64,
        fusion: Fusion = "concat",
        fusion_hidden: int = 128,
        fusion_heads: int = 4,
        text_pooling: Pooling = "cls",
        dropout: float = 0.1,
        num_labels: int | None = None,
        multi_label: bool | None = None,
        label_names: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        init_seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_args()
        self.tokenizer = load_tokenizer(text_backbone, trust_remote_code=trust_remote_code)
        check_first_token_pooling(self.tokenizer, text_pooling, text_backbone, "text_pooling")
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        self.net: MultimodalNet | None = None
        self._follow_data = multi_label is None  # built single-label until a datamodule says otherwise
        if num_labels is not None:
            self._build(num_labels, bool(multi_label))

    # ------------------------------------------------------------------------------------------- building
    def _check_args(self) -> None:
        h = self.hparams
        if not h.image_backbone.startswith("timm:"):
            raise ConfigError(f"image_backbone must be a timm model, 'timm:NAME', got {h.image_backbone!r}")
        check_model_name(h.text_backbone)
        if h.fusion not in ("concat", "cross_attention"):
            raise ConfigError(f"fusion must be 'concat' or 'cross_attention', got {h.fusion!r}")
        if h.text_pooling not in ("cls", "mean"):
            raise ConfigError(f"text_pooling must be 'cls' or 'mean', got {h.text_pooling!r}")
        if h.image_size < 1 or h.fusion_hidden < 1 or h.fusion_heads < 1:
            raise ConfigError("image_size, fusion_hidden and fusion_heads must be >= 1")
        if h.fusion == "cross_attention" and h.fusion_hidden % h.fusion_heads:
            raise ConfigError(f"fusion_hidden={h.fusion_hidden} must be divisible by fusion_heads={h.fusion_heads}")
        if not 0.0 <= h.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {h.dropout}")

    def _build(self, num_labels: int, multi_label: bool) -> None:
        if num_labels < (1 if multi_label else 2):
            raise ConfigError(f"num_labels must be >= {1 if multi_label else 2} for "
                              f"{'multi' if multi_label else 'single'}-label data, got {num_labels}")
        h = self.hparams
        h.num_labels, h.multi_label = num_labels, multi_label  # saved in checkpoints: load_from_checkpoint rebuilds
        self.net = MultimodalNet.build(
            h.image_backbone, h.text_backbone, num_labels, h.image_size, h.fusion, h.fusion_hidden, h.fusion_heads,
            h.dropout, h.text_pooling, h.trust_remote_code, h.init_seed, h.image_pretrained)
        self.val_metrics = classification_metrics(num_labels, multi_label).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_labels, multi_label).clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def setup(self, stage: str) -> None:
        """Build from the datamodule's ``num_labels`` / ``multi_label`` where not given; check they agree."""
        dm = getattr(self.trainer, "datamodule", None)
        found = {k: getattr(dm, k, None) for k in ("num_labels", "multi_label")}
        h = self.hparams
        size = getattr(dm, "image_size", None) or dict(getattr(dm, "hparams", None) or {}).get("image_size")
        if size is not None and size != h.image_size:
            raise ConfigError(f"the datamodule makes {size}x{size} images, the model is built for image_size="
                              f"{h.image_size}: set both to one size")
        if self._follow_data and found["multi_label"] is not None and self.net is not None \
                and found["multi_label"] != h.multi_label:
            self.net = None  # num_labels was given, multi_label was not: follow the data's
            h.multi_label = None
        for key, value in found.items():
            if value is not None and h[key] is not None and value != h[key]:
                raise ConfigError(f"MultimodalClassifier has {key}={h[key]!r} but the datamodule gives {value!r} "
                                  "(leave it unset to follow the data)")
        tok = getattr(dm, "tokenizer", None)
        if tok is not None and tok is not self.tokenizer and tok.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(f"the datamodule's tokenizer is not {h.text_backbone!r}'s (another vocabulary): leave "
                              "data.tokenizer unset to use the model's")
        if self.net is not None:
            self._record_label_names(dm)
            return
        num_labels = h.num_labels if h.num_labels is not None else found["num_labels"]
        if num_labels is None:
            raise ConfigError("MultimodalClassifier needs num_labels, or a datamodule with `num_labels`")
        self._build(int(num_labels), bool(found["multi_label"] if h.multi_label is None else h.multi_label))
        self._record_label_names(dm)

    def configure_model(self) -> None:
        """Under FSDP2 (:class:`~core.strategies.Shardable`): the text encoder (a Hugging Face model) is sharded, one
        FSDP unit per layer; the timm image encoder, fusion and head stay whole on each rank (the strategy averages
        their gradients). The image encoder's batch norms then normalise over the global batch
        (:class:`GlobalBatchNorm`), so that a sharded run trains as one process on the whole batch does, instead of
        each rank normalising its own rows. Runs after :meth:`setup`, which builds the network."""
        super().configure_model()
        trainer = getattr(self, "_trainer", None)
        if self.net is not None and trainer is not None and not whole_model_on_each_rank(trainer.strategy) \
                and trainer.world_size > 1:
            globalise_batch_norm(self.net.image)

    def _record_label_names(self, dm: Any) -> None:
        names = getattr(dm, "label_names", None)
        if names is None:
            return
        if self.hparams.label_names is not None and list(self.hparams.label_names) != list(names):
            raise ConfigError(f"the model was trained on the classes {self.hparams.label_names}, the datamodule "
                              f"gives {list(names)}")
        self.hparams.label_names = list(names)

    # ------------------------------------------------------------------------------------- export / load
    def classifier_config(self) -> dict[str, Any]:
        """The arguments that rebuild this network as a :class:`MultimodalClassifier` (MSD's extra ones left out)."""
        return {k: self.hparams[k] for k in CLASSIFIER_ARGS if k in self.hparams}

    def export(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (the network alone) into ``out_dir``, with the manifest
        ``core.io.MANIFEST``. A new or empty folder or a previous export is replaced (atomically, or nearly:
        :mod:`core.io`); another non-empty folder is refused (:class:`ConfigError`) unless ``overwrite``, and files
        that are not the export's are never removed."""
        if self.net is None:
            raise RuntimeError("nothing to export: the network is not built yet")
        out = Path(out_dir)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        hint = "choose a new or empty folder, or set overwrite (ExportModel's too) to replace only the exported files"
        with atomic_path(out, overwrite=overwrite, manifest=True, hint=hint) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "config.json").write_text(json.dumps(self.classifier_config(), indent=1) + "\n")
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        return out

    @classmethod
    def load(cls, path: str | Path, trust_remote_code: bool = False,
             how: str = "trust_remote_code=True") -> MultimodalClassifier:
        """A built classifier from an :meth:`export` folder or a Lightning checkpoint (of this class or of MSD,
        whose student it then is), in eval mode. Checkpoints are read with ``weights_only=True``.

        ``trust_remote_code`` is the caller's own setting (MSD: its ``--model.trust_remote_code``), never the saved
        one: a file saved with it on is refused unless the caller allows it (``how`` names that option).
        """
        path = Path(path)
        if path.is_dir():
            config_file, weights = path / "config.json", path / "model.safetensors"
            if not config_file.is_file() or not weights.is_file():
                raise ConfigError(f"{path}: an exported classifier folder holds config.json and model.safetensors")
            config, state = json.loads(config_file.read_text()), load_file(str(weights))
        elif path.is_file():
            ckpt = read_checkpoint(path)
            config = saved_hparams(ckpt)
            state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        else:
            raise ConfigError(f"{path}: no such classifier (an exported folder or a .ckpt file)")
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: the saved classifier config is not a JSON object")
        check_remote_code(config, path, trust_remote_code, how)
        config = {k: v for k, v in config.items() if k in CLASSIFIER_ARGS}
        config["image_pretrained"] = False  # the weights come from the file: nothing to download
        config["trust_remote_code"] = trust_remote_code  # the caller's setting, not the file's
        if config.get("num_labels") is None:
            raise ConfigError(f"{path}: the saved classifier records no num_labels (it was never built)")
        model = cls(**config)
        model.net.load_state_dict(state)
        return model.eval()

    # ---------------------------------------------------------------------------------------------- steps
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """A batch (``pixel_values``, ``input_ids``, ``attention_mask``[, ``token_type_ids``]) -> logits (B, L)."""
        if self.net is None:
            raise RuntimeError("MultimodalClassifier is not built yet: give num_labels, or fit/validate it")
        return self.net(batch)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax over classes (single-label) or per-label sigmoid (multi-label): (B, L)."""
        return logits.float().sigmoid() if self.hparams.multi_label else logits.float().softmax(-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, _ = task_loss(self(batch), batch["labels"], self.hparams.multi_label)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0], sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Any], metrics: MetricCollection, mean: MeanMetric, stage: str) -> None:
        logits, labels = self(batch), batch["labels"]  # (B, L); (B,) or (B, L)
        loss, _ = task_loss(logits, labels, self.hparams.multi_label)
        mean.update(loss.detach(), weight=labels.shape[0])
        metrics.update(self.probabilities(logits.detach()), labels.long())
        self.log(f"{stage}/loss", mean, prog_bar=stage == "val")
        self.log_dict(metrics)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Class probabilities (B, C), or per-label probabilities (B, L) for multi-label data."""
        return self.probabilities(self(batch))

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)


CLASSIFIER_ARGS = tuple(inspect.signature(MultimodalClassifier.__init__).parameters)[1:]
