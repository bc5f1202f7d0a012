"""Training throughput in tokens per second, summed over every rank.

Each training batch of the suite carries ``batch["num_tokens"]`` (a 0-d tensor: the tokens the batch stands for,
as if unpacked); batches without it are counted from their ``input_ids`` non-padding positions. The clock runs
from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward and optimizer step; data loading is
not counted), synchronised with the device so asynchronous CUDA work is inside the measured span.

Once per optimizer step the step's tokens and seconds of every rank are gathered (one tiny collective): the
global tokens are the sum over ranks, the step time the slowest rank's. ``throughput/tokens_per_sec`` is the
global tokens over the summed step times of the last ``window`` steps (the first ``warmup_steps`` steps, which
pay for compilation, allocator warm-up and caches, are left out); ``throughput/tokens_total`` counts every
token trained on, warm-up included, and survives a resume (it is part of the callback's checkpoint state).

Work that other callbacks do inside the training-batch hooks (sampling generations, evaluations) would land in
the measured span, whatever the callbacks' order; they wrap it in :func:`not_timed` and it is left out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from core.errors import ConfigError

_EXCLUDED: WeakKeyDictionary[Trainer, float] = WeakKeyDictionary()  # seconds spent in not_timed(), per trainer


@contextmanager
def not_timed(trainer: Trainer) -> Iterator[None]:
    """Leave the enclosed work (inside a training-batch hook of another callback) out of :class:`TokenThroughput`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _EXCLUDED[trainer] = _EXCLUDED.get(trainer, 0.0) + time.perf_counter() - t0


def count_tokens(batch: Any) -> int:
    """Tokens of one batch: ``num_tokens`` if present, else the non-padding positions of ``input_ids``.

    Padding is read from ``attention_mask`` or ``segment_ids`` (0 = pad); without either every position counts.
    Returns -1 when the batch holds neither ``num_tokens`` nor ``input_ids`` (not a token batch).
    """
    if not isinstance(batch, Mapping):
        return -1
    if "num_tokens" in batch:
        n = batch["num_tokens"]
        return int(n.sum().item()) if isinstance(n, Tensor) else int(n)
    ids = batch.get("input_ids")
    if not isinstance(ids, Tensor):
        return -1
    for key in ("attention_mask", "segment_ids"):
        mask = batch.get(key)
        if isinstance(mask, Tensor) and mask.shape == ids.shape:
            return int((mask != 0).sum().item())
    return ids.numel()


class TokenThroughput(Callback):
    """Log training tokens/s (all ranks together) and the running token count.

    Args:
        window: average the rate over the last ``window`` optimizer steps (after warm-up).
        warmup_steps: first optimizer steps left out of the rate (their tokens still count in the total).
        log_every_n_steps: log every N optimizer steps; None uses the Trainer's ``log_every_n_steps``.
            Whatever is left unlogged at the end of training is logged then.
        sync_cuda: synchronise the CUDA device around each batch so the time covers the queued kernels.
    """

    def __init__(
        self,
        window: int = 10,
        warmup_steps: int = 1,
        log_every_n_steps: int | None = None,
        sync_cuda: bool = True,
    ) -> None:
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ConfigError(f"log_every_n_steps must be >= 1 or None, got {log_every_n_steps}")
        self.window = window
        self.warmup_steps = warmup_steps
        self.log_every_n_steps = log_every_n_steps
        self.sync_cuda = sync_cuda
        self.tokens_total = 0  # global, every rank agrees
        self.steps_seen = 0  # optimizer steps measured in this run (warm-up counted)
        self._rates: deque[tuple[float, float]] = deque(maxlen=window)  # (global tokens, seconds) per step
        self._step_tokens = 0  # this rank, since the last optimizer step
        self._step_seconds = 0.0
        self._t0: float | None = None
        self._excluded0 = 0.0
        self._last_global_step = 0
        self._last_logged_step = -1
        self._warned = False
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_global_step = trainer.global_step
        self._last_logged_step = trainer.global_step
        self._rates.clear()
        self._step_tokens, self._step_seconds, self._t0 = 0, 0.0, None
        self.steps_seen = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(trainer)
        self._excluded0 = _EXCLUDED.get(trainer, 0.0)
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(trainer)
        if self._t0 is not None:
            excluded = _EXCLUDED.get(trainer, 0.0) - self._excluded0
            self._step_seconds += max(time.perf_counter() - self._t0 - excluded, 0.0)
            self._t0 = None
        n = count_tokens(batch)
        if n < 0:
            if not self._warned:
                rank_zero_warn("TokenThroughput: the batch has neither `num_tokens` nor `input_ids`; counted as 0")
                self._warned = True
            n = 0
        self._step_tokens += n
        if trainer.global_step == self._last_global_step:
            return  # accumulating gradients: the optimizer step is not done yet
        self._last_global_step = trainer.global_step
        self._close_step(trainer)
        if trainer.global_step % self._every(trainer) == 0:
            self._log(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._step_tokens or self._step_seconds:  # a trailing partial accumulation
            self._close_step(trainer)
        if self._last_logged_step != trainer.global_step and self.steps_seen:
            self._log(trainer)

    # ----------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"tokens_total": self.tokens_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_total = int(state_dict.get("tokens_total", 0))

    # ---------------------------------------------------------------------------------------------- helpers
    def _every(self, trainer: Trainer) -> int:
        return self.log_every_n_steps or max(int(trainer.log_every_n_steps), 1)

    def _sync(self, trainer: Trainer) -> None:
        device = trainer.strategy.root_device
        if self.sync_cuda and device.type == "cuda":
            torch.cuda.synchronize(device)

    def _close_step(self, trainer: Trainer) -> None:
        """Gather this step's tokens and seconds from every rank; update the total and the window."""
        device = trainer.strategy.root_device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        local = torch.tensor([self._step_tokens, self._step_seconds], dtype=dtype, device=device)  # (2,)
        gathered = trainer.strategy.all_gather(local).reshape(-1, 2)  # (world, 2)
        tokens, seconds = float(gathered[:, 0].sum()), float(gathered[:, 1].max())
        self._step_tokens, self._step_seconds = 0, 0.0
        self.tokens_total += round(tokens)
        self.steps_seen += 1
        if self.steps_seen > self.warmup_steps and seconds > 0:
            self._rates.append((tokens, seconds))

    def _log(self, trainer: Trainer) -> None:
        metrics = {"throughput/tokens_total": float(self.tokens_total)}
        if self._rates:
            tokens = sum(t for t, _ in self._rates)
            seconds = sum(s for _, s in self._rates)
            metrics["throughput/tokens_per_sec"] = tokens / seconds
            metrics["throughput/tokens_per_sec_per_device"] = tokens / seconds / max(trainer.world_size, 1)
        self.last_metrics = metrics
        self._last_logged_step = trainer.global_step
        # The step Lightning's own loggers use (like LearningRateMonitor), so rows line up with train/loss.
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
