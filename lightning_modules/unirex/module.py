"""UNIREX: a rationale extractor trained jointly with the task model, for faithful and plausible rationales.

Chan et al. 2022 (ICML), "UNIREX: A Unified Learning Framework for Language Model Rationale Extraction". A rationale
extractor scores every input token (``networks.py``: heuristic attribution, or a learned token head on a separate
encoder or on the task model's own one); the top-k% tokens (k in ``train_topk``) are a hard rationale, and the
task model learns with the weighted sum of (``loss.py``)

- task cross-entropy on the full input;
- comprehensiveness: the input without the rationale should lose (margin ``comp_margin``, 1.0);
- sufficiency: the rationale alone should do as well (margin ``suff_margin``, 0.1; or ``diff`` / ``kl``);
- plausibility: the extractor's token logits against human rationales (BCE, positive class reweighted).

In training, the k variants of both inputs are made by attention masking and go through the task model in one
batched forward of ``2 K N`` rows (``batched_k=False`` loops over k instead, for comparison). The hard top-k masks
carry no gradient, so the faithfulness terms train the task model to be faithful to the extractor's rationales,
and a learned extractor learns from plausibility (and, with a shared encoder, from the task terms too): the
reference code does the same.

Evaluation (``val/`` and ``test/``; torchmetrics states, exact under DDP): ``accuracy``, ``f1_macro``; ``comp_aopc``
and ``suff_aopc`` over ``eval_topk`` with the removed tokens *deleted* (ERASER), the drop of the predicted class's
probability, normalised over the bins as ERASER does (``aopc_normalisation="eraser"``: mean over the K bins) or as
the UNIREX code does (``"unirex"``: sum / (K + 1)); plausibility ``auprc`` (from the token scores), ``token_f1`` and
``iou_f1`` (IOU >= 0.5) of the hard rationale (the top ``hard_topk``%, or for a learned extractor logit > 0 with
``hard_rationale="threshold"``) against human rationales. Heuristic extractors attribute the gold label in training
and the predicted one at evaluation. ``test`` also writes ``metrics.json`` into the log folder, which ``lm-suite nrg``
reads to compare runs.

Multiple choice (CoS-E): batches of (B, C, T) option rows; the task head gives one score per row, (B, C) logits.
Extraction, masking and deletion work on the option rows; plausibility is scored on the predicted option's row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from core.backbones import Dtype, build_encoder, check_model_name, load_tokenizer, seeded
from core.errors import ConfigError
from core.heads import check_first_token_pooling
from core.io import atomic_write_text
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable
from lightning_modules.unirex.loss import (
    CompCriterion,
    SuffCriterion,
    comprehensiveness_loss,
    per_example_nll,
    plausibility_loss,
    rationale_inputs,
    sufficiency_loss,
    topk_masks,
)
from lightning_modules.unirex.metrics import RationaleMetrics
from lightning_modules.unirex.networks import (
    GRADIENT_METHODS,
    ExtractorKind,
    TaskModel,
    TokenScorer,
    attention_scores,
    delete_tokens,
    gradient_attribution,
    to_words,
)

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "candidate_mask", "rationale")
DEFAULT_TOPK = [1.0, 5.0, 10.0, 20.0, 50.0]


class UNIREX(Shardable, LightningModule):
    """Task model + rationale extractor trained with task, comprehensiveness, sufficiency and plausibility losses.

    Args:
        backbone: the task model's encoder (``build_encoder``: ``tiny-bert``, ``hf:<id or folder>``...).
        num_labels: classes (multiple choice: options per example); None = the datamodule's, at setup.
        multiple_choice: None = the datamodule's (``num_choices`` set: CoS-E-style rows).
        pooling, dropout: the task head reads the first token (``cls``) or the token mean, after dropout.
        extractor: ``learned``, ``saliency``, ``input_x_gradient``, ``integrated_gradients``, ``attention``, or the
            references ``random`` and ``gold``.
        extractor_encoder: learned extractor on a ``separate`` encoder (``extractor_backbone``, default the task
            backbone) or ``shared`` with the task model.
        extractor_head, extractor_hidden: the token head, ``linear`` or ``mlp`` (with that hidden width).
        ig_steps: integrated-gradients path points.
        task_weight, comp_weight, suff_weight, plaus_weight: loss weights (0 turns a term off).
        comp_criterion, comp_margin, suff_criterion, suff_margin: see :mod:`lightning_modules.unirex.loss`.
        plaus_pos_weight: BCE positive-class weight; None = #negatives / #positives of the batch.
        train_topk, eval_topk: the k% bins; ``sample_k`` trains on one k drawn per step instead of all.
        batched_k: all k variants in one forward (True) or a loop over k.
        aopc_normalisation: ``eraser`` (mean over bins) or ``unirex`` (sum / (bins + 1)).
        hard_rationale, hard_topk: the hard rationale for token and IOU F1: ``topk`` (the top ``hard_topk``% of
            the candidates, the same budget for every extractor) or ``threshold`` (learned: logit > 0, as the UNIREX
            code; gold: the rationale itself); ``auto`` = threshold for gold, topk otherwise.
        plausibility_level: score plausibility on document ``word``s, as ERASER does (a word's score is its best
            subword's; it is in the hard rationale if any subword is), or on ``subword`` tokens, as the UNIREX code.
    """

    def __init__(
        self,
        backbone: str = "tiny-bert",
        num_labels: int | None = None,
        multiple_choice: bool | None = None,
        pooling: Literal["cls", "mean"] = "cls",
        dropout: float = 0.1,
        extractor: ExtractorKind = "learned",
        extractor_encoder: Literal["separate", "shared"] = "separate",
        extractor_backbone: str | None = None,
        extractor_head: Literal["linear", "mlp"] = "linear",
        extractor_hidden: int = 256,
        ig_steps: int = 8,
        task_weight: float = 1.0,
        comp_weight: float = 0.5,
        comp_criterion: CompCriterion = "margin",
        comp_margin: float = 1.0,
        suff_weight: float = 0.5,
        suff_criterion: SuffCriterion = "margin",
        suff_margin: float = 0.1,
        plaus_weight: float = 0.5,
        plaus_pos_weight: float | None = None,
        train_topk: list[float] | None = None,
        eval_topk: list[float] | None = None,
        sample_k: bool = False,
        batched_k: bool = True,
        aopc_normalisation: Literal["eraser", "unirex"] = "eraser",
        hard_rationale: Literal["auto", "threshold", "topk"] = "auto",
        hard_topk: float = 10.0,
        plausibility_level: Literal["word", "subword"] = "word",
        dtype: Dtype | None = None,
        trust_remote_code: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_topk = list(DEFAULT_TOPK if train_topk is None else train_topk)
        self.eval_topk = list(DEFAULT_TOPK if eval_topk is None else eval_topk)
        self._check_args()
        check_model_name(backbone)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        check_first_token_pooling(self.tokenizer, pooling, backbone, "pooling")
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        self.task: TaskModel | None = None
        self.scorer: TokenScorer | None = None
        if num_labels is not None:
            self._build(num_labels, bool(multiple_choice))

    # ------------------------------------------------------------------------------------------- building
    def _check_args(self) -> None:
        h = self.hparams
        weights = {k: h[k] for k in ("task_weight", "comp_weight", "suff_weight", "plaus_weight")}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ConfigError(f"loss weights must be >= 0 with at least one > 0, got {weights}")
        if h.plaus_weight > 0 and h.extractor != "learned":
            raise ConfigError(f"plausibility trains a learned extractor; extractor={h.extractor!r} has no parameters "
                              "(set plaus_weight: 0 or extractor: learned)")
        if h.extractor not in ("learned", "attention", "random", "gold", *GRADIENT_METHODS):
            raise ConfigError(f"unknown extractor {h.extractor!r}")
        for name, ks in (("train_topk", self.train_topk), ("eval_topk", self.eval_topk)):
            if not ks or any(not 0 < float(k) <= 100 for k in ks):
                raise ConfigError(f"{name} must be percentages in (0, 100], got {ks}")
        if not 0 < h.hard_topk <= 100:
            raise ConfigError(f"hard_topk must be in (0, 100], got {h.hard_topk}")
        if h.hard_rationale == "threshold" and h.extractor not in ("learned", "gold"):
            raise ConfigError(f"hard_rationale=threshold needs a learned or gold extractor, not {h.extractor!r}")
        if h.comp_margin < 0 or h.suff_margin < 0:
            raise ConfigError("comp_margin and suff_margin must be >= 0")
        if h.ig_steps < 1:
            raise ConfigError(f"ig_steps must be >= 1, got {h.ig_steps}")

    def _build(self, num_labels: int, multiple_choice: bool) -> None:
        h = self.hparams
        if num_labels < 2:
            raise ConfigError(f"num_labels must be >= 2 (classes, or options per example), got {num_labels}")
        encoder = build_encoder(h.backbone, dtype=h.dtype, trust_remote_code=h.trust_remote_code, seed=h.init_seed)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # we pool hidden states ourselves: an unused pooler would trip DDP
        if h.extractor == "attention":
            encoder.set_attn_implementation("eager")  # sdpa returns no attention weights
        with seeded(h.init_seed):  # the heads too: one init_seed gives one initial model
            self.task = TaskModel(encoder, 1 if multiple_choice else num_labels, h.pooling, h.dropout)
        if h.extractor == "learned":
            separate = None
            if h.extractor_encoder == "separate":
                name = h.extractor_backbone or h.backbone
                check_model_name(name)
                if name != h.backbone and load_tokenizer(name).get_vocab() != self.tokenizer.get_vocab():
                    raise ConfigError(f"extractor_backbone {name!r} reads the task model's token ids, so it needs the "
                                      f"same vocabulary as {h.backbone!r}")
                separate = build_encoder(name, dtype=h.dtype, trust_remote_code=h.trust_remote_code,
                                         seed=h.init_seed + 1)
                if getattr(separate, "pooler", None) is not None:
                    separate.pooler = None
            elif h.extractor_encoder != "shared":
                raise ConfigError(f"extractor_encoder must be 'separate' or 'shared', got {h.extractor_encoder!r}")
            width = (separate or encoder).config.hidden_size
            with seeded(h.init_seed + 2):
                self.scorer = TokenScorer(width, h.extractor_head, h.extractor_hidden, h.dropout, separate)
            if h.plaus_weight == 0:
                rank_zero_warn("a learned extractor with plaus_weight=0 gets no gradient from the hard top-k "
                               "rationales" + (" (only through the shared encoder)" if separate is None else ""))
        self.multiple_choice = multiple_choice
        self.val_metrics = RationaleMetrics(num_labels, len(self.eval_topk), h.aopc_normalisation)
        self.test_metrics = RationaleMetrics(num_labels, len(self.eval_topk), h.aopc_normalisation)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        num_labels = getattr(dm, "num_labels", None)
        if isinstance(num_labels, int):  # a RationaleDataModule: the model must fit its data
            choices = getattr(dm, "num_choices", None)
            h = self.hparams
            if h.num_labels not in (None, num_labels) or h.multiple_choice not in (None, choices is not None):
                raise ConfigError(
                    f"the model has num_labels={h.num_labels}, multiple_choice={h.multiple_choice}; the data has "
                    f"num_labels={num_labels}, multiple_choice={choices is not None} (leave them unset to follow "
                    "the data)")
            if self.task is None:
                self.hparams["num_labels"] = num_labels  # saved in checkpoints: load_from_checkpoint rebuilds it
                self.hparams["multiple_choice"] = choices is not None
                self._build(num_labels, choices is not None)
        if self.task is None:
            raise ConfigError("UNIREX needs num_labels or a RationaleDataModule")
        if self.hparams.extractor in GRADIENT_METHODS:
            # attribution needs gradients at evaluation: no torch.inference_mode in the evaluation loops
            t = self.trainer
            for loop in (t.validate_loop, t.test_loop, t.predict_loop, t.fit_loop.epoch_loop.val_loop):
                loop.inference_mode = False

    def configure_model(self) -> None:
        """Under FSDP2, shard the task encoder and a separate extractor encoder (:class:`Shardable`), then register
        the word-embedding lookup of the attributions as a forward of the FSDP unit that holds the embeddings."""
        super().configure_model()
        if self.task is not None:
            self.task.register_sharded_embed()

    def _processes(self) -> int:
        """Processes that split each global batch (data parallel), 1 without a trainer."""
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def _sum_over_processes(self, value: Tensor) -> Tensor:
        """``value`` summed over the data-parallel processes (a collective: every rank calls it)."""
        if self._processes() <= 1:
            return value
        return self.trainer.strategy.reduce(value.clone(), reduce_op="sum")

    # -------------------------------------------------------------------------------------------- pieces
    def _rows(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The batch's token tensors as option rows (N, T): N = B, or B * C for multiple choice."""
        if self.multiple_choice != (batch["input_ids"].ndim == 3):
            raise ConfigError(f"the model was built for {'multiple-choice' if self.multiple_choice else 'single'} "
                              f"inputs, the batch has input_ids of shape {tuple(batch['input_ids'].shape)}")
        width = batch["input_ids"].shape[-1]
        rows = {k: batch[k].reshape(-1, width) for k in TOKEN_KEYS if batch.get(k) is not None}
        rows["candidate_mask"] = rows["candidate_mask"].bool()
        return rows

    def _logits(self, row_logits: Tensor, batch_size: int) -> Tensor:
        """Row outputs (..., N, out) -> class logits (..., B, C)."""
        if self.multiple_choice:
            return row_logits.reshape(*row_logits.shape[:-2], batch_size, -1)
        return row_logits

    def _row_targets(self, labels: Tensor) -> Tensor:
        """The output index each row's attribution explains: its class (single) or its own score (options)."""
        if self.multiple_choice:
            return torch.zeros(labels.shape[0] * self.hparams.num_labels, dtype=torch.long, device=labels.device)
        return labels

    def _scores(self, rows: dict[str, Tensor], hidden: Tensor, attentions: Any, target: Tensor) -> Tensor:
        """Token scores (N, T) of the extractor; ``target`` is the class each heuristic attribution explains."""
        kind = self.hparams.extractor
        mask, types = rows["attention_mask"], rows.get("token_type_ids")
        if kind == "learned":
            return self.scorer(hidden, mask, rows["input_ids"], types)
        if kind == "attention":
            return attention_scores(attentions)
        if kind == "random":
            return torch.rand(mask.shape, device=mask.device)
        if kind == "gold":
            return rows["rationale"].float()
        targets = self._row_targets(target).unsqueeze(1)  # (N, 1)
        n = mask.shape[0]

        def score_fn(embeds: Tensor) -> Tensor:
            reps = embeds.shape[0] // n
            out, _, _ = self.task(mask.repeat(reps, 1), inputs_embeds=embeds,
                                  token_type_ids=None if types is None else types.repeat(reps, 1))
            return out.gather(1, targets.repeat(reps, 1)).squeeze(1)  # (M,)

        ids = rows["input_ids"]
        baseline = None
        if kind == "integrated_gradients":  # the inputs and the [PAD] baseline in one lookup
            pad = torch.full_like(ids, self.tokenizer.pad_token_id)
            embeds, pad_embeds = self.task.embed(torch.cat([ids, pad])).split(n)  # (N, T, H) each
            baseline = torch.where(rows["candidate_mask"].unsqueeze(-1), pad_embeds, embeds)
        else:
            embeds = self.task.embed(ids)  # (N, T, H)
        with torch.enable_grad():
            return gradient_attribution(score_fn, embeds, kind, baseline, self.hparams.ig_steps)

    def _task_forward(self, rows: dict[str, Tensor]) -> tuple[Tensor, Tensor, Any]:
        """The task model on the full rows (with attention weights when the extractor reads them)."""
        return self.task(rows["attention_mask"], input_ids=rows["input_ids"],
                         token_type_ids=rows.get("token_type_ids"),
                         output_attentions=self.hparams.extractor == "attention")

    def _variant_logits(self, rows: dict[str, Tensor], masks: Tensor, batch_size: int) -> Tensor:
        """Task logits of masked inputs: masks (V, N, T) -> (V, B, C); V = 2K (comprehensiveness, then sufficiency).

        ``batched_k``: every variant in one forward of V * N rows; otherwise one forward per k (its two variants).
        """
        v, n, t = masks.shape
        types = rows.get("token_type_ids")
        groups = [list(range(v))] if self.hparams.batched_k else [[i, v // 2 + i] for i in range(v // 2)]
        outs: list[Tensor] = [masks.new_empty(0)] * v
        for group in groups:
            reps = len(group)
            out, _, _ = self.task(masks[group].reshape(reps * n, t).long(), input_ids=rows["input_ids"].repeat(reps, 1),
                                  token_type_ids=None if types is None else types.repeat(reps, 1))
            for j, variant in enumerate(group):
                outs[variant] = out.view(reps, n, -1)[j]  # (N, out)
        return self._logits(torch.stack(outs), batch_size)

    def _train_ks(self) -> list[float]:
        if not self.hparams.sample_k:
            return self.train_topk
        return [self.train_topk[int(torch.randint(len(self.train_topk), ()).item())]]

    # ---------------------------------------------------------------------------------------------- steps
    def losses(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted training loss of a batch and its parts (detached), for logging."""
        h = self.hparams
        rows, labels = self._rows(batch), batch["labels"]
        b = labels.shape[0]
        row_logits, hidden, attentions = self._task_forward(rows)
        logits = self._logits(row_logits, b)  # (B, C)
        task_nll = per_example_nll(logits, labels)  # (B,)
        loss = h.task_weight * task_nll.mean()
        logs = {"task_loss": task_nll.mean().detach()}
        if h.comp_weight > 0 or h.suff_weight > 0 or h.plaus_weight > 0 or self.scorer is not None:
            scores = self._scores(rows, hidden, attentions, labels)  # (N, T)
        if h.comp_weight > 0 or h.suff_weight > 0:
            rationale = topk_masks(scores, rows["candidate_mask"], self._train_ks())  # (K, N, T)
            comp_mask, suff_mask = rationale_inputs(rows["attention_mask"], rows["candidate_mask"], rationale)
            k = rationale.shape[0]
            variants = self._variant_logits(rows, torch.cat([comp_mask, suff_mask]), b)  # (2K, B, C)
            nll = per_example_nll(variants, labels)  # (2K, B)
            if h.comp_weight > 0:
                comp, m = comprehensiveness_loss(task_nll, nll[:k], h.comp_criterion, h.comp_margin)
                loss = loss + h.comp_weight * comp
                logs.update(comp_loss=comp.detach(), comp_gap=m["comp_gap"])
            if h.suff_weight > 0:
                suff, m = sufficiency_loss(task_nll, nll[k:], h.suff_criterion, h.suff_margin, logits, variants[k:])
                loss = loss + h.suff_weight * suff
                logs.update(suff_loss=suff.detach(), suff_gap=m["suff_gap"])
        if h.plaus_weight > 0:
            has = batch["has_rationale"].bool().repeat_interleave(rows["input_ids"].shape[0] // b)  # (N,)
            plaus, _ = plausibility_loss(scores, rows["rationale"], rows["candidate_mask"] & has.unsqueeze(1),
                                         h.plaus_pos_weight, self._sum_over_processes, self._processes())
            loss = loss + h.plaus_weight * plaus
            logs["plaus_loss"] = plaus.detach()
        elif self.scorer is not None:
            loss = loss + 0.0 * scores.sum()  # the extractor joins the graph: DDP sees all parameters used
        return loss, logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, logs = self.losses(batch)
        b = batch["labels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=b, sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Any], metrics: RationaleMetrics, prefix: str) -> dict[str, Any]:
        h = self.hparams
        rows, labels = self._rows(batch), batch["labels"]
        b, n = labels.shape[0], rows["input_ids"].shape[0]
        row_logits, hidden, attentions = self._task_forward(rows)
        logits = self._logits(row_logits, b).float()  # (B, C)
        probs = logits.softmax(-1)
        pred = probs.argmax(-1)  # (B,)
        self.log(f"{prefix}/loss", F.cross_entropy(logits, labels), batch_size=b, sync_dist=True)
        scores = self._scores(rows, hidden, attentions, pred).float()  # (N, T)

        # faithfulness: the rationale deleted (comprehensiveness) or kept alone (sufficiency), every k in one forward
        rationale = topk_masks(scores, rows["candidate_mask"], self.eval_topk)  # (K, N, T)
        comp_keep, suff_keep = rationale_inputs(rows["attention_mask"], rows["candidate_mask"], rationale)
        keep = torch.cat([comp_keep, suff_keep]).flatten(0, 1)  # (2K*N, T)
        reps = keep.shape[0] // n
        types = rows.get("token_type_ids")
        ids, mask, types = delete_tokens(rows["input_ids"].repeat(reps, 1), keep, self.tokenizer.pad_token_id,
                                         None if types is None else types.repeat(reps, 1))
        out, _, _ = self.task(mask, input_ids=ids, token_type_ids=types)
        variant_probs = self._logits(out.view(reps, n, -1), b).float().softmax(-1)  # (2K, B, C)
        index = pred.view(1, b, 1).expand(reps, b, 1)
        variant_pred = variant_probs.gather(-1, index).squeeze(-1)  # (2K, B)
        full = probs.gather(-1, pred.unsqueeze(-1)).squeeze(-1)  # (B,)
        k = len(self.eval_topk)
        metrics.comp_aopc.update(full, variant_pred[:k])
        metrics.suff_aopc.update(full, variant_pred[k:])
        metrics.task.update(pred, labels)

        # plausibility: on each example's row (multiple choice: the predicted option's), per word or per subword
        sel = torch.arange(b, device=pred.device) * (n // b) + (pred if self.multiple_choice else 0)
        view = {key: rows[key][sel] for key in ("input_ids", "attention_mask", "rationale", "candidate_mask")}
        view["scores"] = scores[sel]  # (B, T) each
        view["hard"] = self._hard_rationale(view["scores"], view["candidate_mask"])
        values, gold, hard, scored = view["scores"], view["rationale"], view["hard"], view["candidate_mask"]
        if h.plausibility_level == "word":
            word_ids = batch["word_ids"].masked_fill(~scored, -1)
            values, scored = to_words(values, word_ids)  # (B, W)
            gold, hard = to_words(gold, word_ids)[0], to_words(hard, word_ids)[0].bool()
        scored = scored & batch["has_rationale"].bool().unsqueeze(1)
        metrics.auprc.update(values, gold, scored)
        metrics.token_f1.update(hard, gold, scored)
        metrics.iou_f1.update(hard, gold, scored)
        return {**view, "labels": labels, "preds": pred, "ids": batch.get("ids")}

    def _hard_rationale(self, scores: Tensor, candidate: Tensor) -> Tensor:
        h = self.hparams
        mode = h.hard_rationale
        if mode == "auto":  # one budget for every extractor, so their F1s compare; gold is its own rationale
            mode = "threshold" if h.extractor == "gold" else "topk"
        if mode == "threshold":
            return (scores > (0.0 if h.extractor == "learned" else 0.5)) & candidate
        return topk_masks(scores, candidate, [h.hard_topk])[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per example: predicted class, class probabilities, and token scores / hard rationale of its row."""
        rows, b = self._rows(batch), batch["input_ids"].shape[0]
        row_logits, hidden, attentions = self._task_forward(rows)
        probs = self._logits(row_logits, b).float().softmax(-1)
        pred = probs.argmax(-1)
        scores = self._scores(rows, hidden, attentions, pred).float()
        sel = torch.arange(b, device=pred.device) * (scores.shape[0] // b) + (pred if self.multiple_choice else 0)
        return {"ids": batch.get("ids"), "preds": pred, "probs": probs, "scores": scores[sel],
                "hard": self._hard_rationale(scores[sel], rows["candidate_mask"][sel])}

    def _epoch_end(self, metrics: RationaleMetrics, prefix: str) -> dict[str, float]:
        values = metrics.compute()
        if int(metrics.auprc.scored) == 0 and not self.trainer.sanity_checking:
            rank_zero_warn(f"{prefix}: no example has a human rationale, so auprc, token_f1 and iou_f1 are 0")
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()})
        out = {f"{prefix}/{k}": float(v) for k, v in values.items()}
        out.update({f"{prefix}/{k}": v for k, v in metrics.per_bin(self.eval_topk).items()})
        metrics.reset()
        return out

    def on_validation_epoch_end(self) -> None:
        self._epoch_end(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        """Log the test metrics and write them (with the per-bin drops) to ``<log_dir>/metrics.json`` for NRG."""
        values = self._epoch_end(self.test_metrics, "test")
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is collective: every rank
        if self.trainer.is_global_zero:
            atomic_write_text(folder / "metrics.json", json.dumps(values, indent=2) + "\n")

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)
