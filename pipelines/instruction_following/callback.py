"""Instruction-following evaluation during training: IFEval's accuracies on held-out prompts every N steps.

Every ``every_n_steps`` optimizer steps (and once more when training ends) the policy answers each held-out prompt
once (greedy by default) and the responses are scored with IFEval's verifiers (Zhou et al. 2023, "Instruction-
Following Evaluation for Large Language Models"): prompt-level and instruction-level accuracy, strict and loose
(:mod:`pipelines.instruction_following.evaluation`). Logged as ``ifeval/prompt_strict``,
``ifeval/instruction_strict``, ``ifeval/prompt_loose``, ``ifeval/instruction_loose`` (and ``ifeval/failures``).

Under data parallelism (DDP) each rank answers its own shard of the prompts
(``prompts[rank::world_size]``) with its full copy of the weights; the scored rows are gathered
(``torch.distributed.all_gather_object``) so that every rank computes the same accuracies over all prompts.
Sharded weights (FSDP2, model parallelism, DeepSpeed ZeRO stage 3) are out of scope: each rank's share of the prompts
would need every rank in lockstep at every generated token. The callback then warns once (one line) at setup and
does nothing; evaluate a saved checkpoint instead (``lm-suite export`` then ``lm-suite ifeval``).

YAML::

    trainer:
      callbacks:
        - class_path: pipelines.instruction_following.callback.IFEvalCallback
          init_args: {prompts: data/ifeval_heldout.jsonl, every_n_steps: 100, limit: 200}

CLI::

    lm-suite fit --config configs/dpo.yaml --trainer.callbacks+=IFEvalCallback \\
        --trainer.callbacks.prompts=data/ifeval_heldout.jsonl --trainer.callbacks.every_n_steps=100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from callbacks.throughput import not_timed
from core.errors import ConfigError
from core.generation import HFGenerator
from pipelines.instruction_following.evaluation import EvalResult, EvalRow, generate_rows, write_eval
from pipelines.instruction_following.pairs import PromptRecord, read_prompts

METRIC_KEYS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")


class IFEvalCallback(Callback):
    """Evaluate the policy on IFEval-format prompts every N optimizer steps (IFEval, Zhou et al. 2023).

    The model is ``pl_module.policy`` (else ``pl_module.model``), the tokenizer ``pl_module.tokenizer`` (else the
    datamodule's). Generation runs under ``torch.no_grad()`` with the model in eval mode; the train/eval mode of
    every submodule and the tokenizer's ``padding_side`` (generation pads on the left) are restored afterwards.
    Under sharded weights (FSDP2, model parallelism, DeepSpeed ZeRO stage 3) it warns once at setup and is skipped.

    Args:
        prompts: IFEval-format JSONL of held-out prompts (``key, prompt, instruction_id_list, kwargs``); read and
            validated at setup, so a bad file fails before training with ``file:line``.
        every_n_steps: evaluate after every N optimizer steps (``trainer.global_step``); 0 = only at the end.
        max_new_tokens: tokens generated per response.
        batch_size: prompts per ``generate`` call on each rank.
        limit: evaluate only the first N prompts (None = all).
        temperature: 0 = greedy decoding; above 0, seeded sampling.
        seed: seed of sampling (training's RNG state is not touched).
        on_fit_end: also evaluate when training ends (unless that step was just evaluated).
        save_rows: write the scored rows to ``ifeval_step{N}.jsonl`` in ``trainer.log_dir`` (or
            ``default_root_dir``), rank 0 only.

    ``history`` holds one dict per evaluation: ``step``, the four accuracies, ``failures``, ``n_prompts``,
    ``n_instructions`` and ``fit_end`` (True for the end-of-training evaluation); the same on every rank.
    Values are logged to the trainer's loggers at Lightning's own step numbering (as ``LearningRateMonitor``), and
    periodic ones also into ``trainer.callback_metrics`` (so ``ModelCheckpoint(monitor="ifeval/prompt_strict")``
    works).
    """

    def __init__(
        self,
        prompts: str,
        every_n_steps: int = 50,
        max_new_tokens: int = 128,
        batch_size: int = 16,
        limit: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        on_fit_end: bool = True,
        save_rows: bool = True,
    ) -> None:
        if every_n_steps < 0:
            raise ConfigError(f"IFEvalCallback: every_n_steps must be >= 0, got {every_n_steps}")
        if max_new_tokens < 1:
            raise ConfigError(f"IFEvalCallback: max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ConfigError(f"IFEvalCallback: batch_size must be >= 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise ConfigError(f"IFEvalCallback: limit must be >= 1 or None, got {limit}")
        if temperature < 0:
            raise ConfigError(f"IFEvalCallback: temperature must be >= 0, got {temperature}")
        self.prompts = prompts
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.limit = limit
        self.temperature = temperature
        self.seed = seed
        self.on_fit_end = on_fit_end
        self.save_rows = save_rows
        self.records: list[PromptRecord] = []
        self.history: list[dict[str, Any]] = []
        self.last_result: EvalResult | None = None
        self._last_step = -1
        self.skipped: str | None = None

    # ------------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the strategy and the module, and read the prompts: every mistake fails before training.

        Only for ``fit`` (the callback evaluates during training), so ``validate`` / ``test`` runs that share the
        config are not held up by it.
        """
        if stage != "fit":
            return
        self.skipped = sharded_reason(trainer.strategy)
        if self.skipped:
            rank_zero_warn(f"IFEvalCallback: {self.skipped}; skipped (evaluate a saved checkpoint instead)")
            return
        self._model_and_tokenizer(trainer, pl_module)
        records = read_prompts(self.prompts)
        self.records = records[: self.limit] if self.limit is not None else records

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step  # a resumed run does not re-evaluate the step it resumed at

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.skipped:
            return
        if self.every_n_steps and step != self._last_step and step % self.every_n_steps == 0:
            result = self.evaluate(trainer, pl_module)
            for k in METRIC_KEYS:  # into callback_metrics (checkpoint monitors), not again into the loggers
                pl_module.log(f"ifeval/{k}", float(result.as_dict()[k]), logger=False, on_step=True, on_epoch=False,
                              rank_zero_only=False, sync_dist=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_fit_end and not self.skipped and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module, fit_end=True)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, fit_end: bool = False) -> EvalResult:
        """Evaluate this rank's shard, gather every rank's rows, log and record the accuracies over all prompts."""
        step = trainer.global_step
        self._last_step = step
        rank, world = trainer.global_rank, max(trainer.world_size, 1)
        shard = list(range(rank, len(self.records), world))
        model, tok = self._model_and_tokenizer(trainer, pl_module)
        modes = {m: m.training for m in model.modules()}
        padding_side = getattr(tok, "padding_side", None)
        try:
            with not_timed(trainer), torch.no_grad(), trainer.precision_plugin.forward_context():
                generator = HFGenerator(
                    model=model, tokenizer=tok, temperature=self.temperature, batch_size=self.batch_size,
                    seed=self.seed, device=str(pl_module.device),
                )
                rows = generate_rows(generator, [self.records[i] for i in shard], max_new_tokens=self.max_new_tokens)
        finally:
            for m, training in modes.items():
                m.train(training)
            if padding_side is not None:
                tok.padding_side = padding_side
        gathered = _gather(trainer, list(zip(shard, rows, strict=True)))
        result = EvalResult.from_rows(row for _, row in sorted(gathered, key=lambda item: item[0]))
        self.last_result = result
        self.history.append({"step": step, **result.as_dict(), "fit_end": fit_end})
        self._log(trainer, result, fit_end)
        return result

    def _log(self, trainer: Trainer, result: EvalResult, fit_end: bool) -> None:
        values = result.as_dict()
        metrics = {f"ifeval/{k}": float(values[k]) for k in (*METRIC_KEYS, "failures")}
        # Lightning's own logger step (like LearningRateMonitor), so rows line up with train/loss.
        log_step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=log_step)
        # On every rank: `trainer.log_dir` broadcasts, a collective that rank 0 alone would hang or crash in.
        path = self.rows_path(trainer, trainer.global_step) if self.save_rows else None
        if trainer.is_global_zero:
            if path is not None:
                write_eval(result, path)
            where = "end of training" if fit_end else f"step {trainer.global_step}"
            rank_zero_info(
                f"IFEval at {where} ({values['n_prompts']} prompts, {values['failures']} failed): "
                + ", ".join(f"{k} {values[k]:.4f}" for k in METRIC_KEYS)
            )

    def rows_path(self, trainer: Trainer, step: int) -> Path:
        """``<trainer.log_dir or default_root_dir>/ifeval_step{step}.jsonl`` (call on every rank: it broadcasts)."""
        return Path(trainer.log_dir or trainer.default_root_dir) / f"ifeval_step{step}.jsonl"

    @staticmethod
    def _model_and_tokenizer(trainer: Trainer, pl_module: LightningModule) -> tuple[nn.Module, Any]:
        model = getattr(pl_module, "policy", None)
        if model is None:
            model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module) or not hasattr(model, "generate"):
            raise ConfigError(f"IFEvalCallback needs `pl_module.policy` (or `.model`), a generating causal LM; "
                              f"{type(pl_module).__name__} has none")
        tok = getattr(pl_module, "tokenizer", None)
        if tok is None and trainer.datamodule is not None:
            tok = getattr(trainer.datamodule, "tokenizer", None)
        if tok is None:
            raise ConfigError("IFEvalCallback needs a tokenizer: `pl_module.tokenizer` (or the datamodule's)")
        return model, tok


def sharded_reason(strategy: Any) -> str | None:
    """Why ``strategy`` keeps the callback from generating (weights sharded across ranks), or None."""
    name = type(strategy).__name__
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        return f"{name} shards the weights across ranks"
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        return "DeepSpeed ZeRO stage 3 shards the weights across ranks"
    return None


def _gather(trainer: Trainer, local: list[tuple[int, EvalRow]]) -> list[tuple[int, EvalRow]]:
    """Every rank's ``(prompt index, row)`` items, on every rank."""
    if trainer.world_size <= 1:
        return local
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("IFEvalCallback: world_size > 1 but torch.distributed is not initialised")
    parts: list[list[tuple[int, EvalRow]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in (part or [])]
