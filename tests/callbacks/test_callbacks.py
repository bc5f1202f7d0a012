"""Tests of the shared callbacks (callbacks/): token throughput, sample generations, the NaN/inf guard.

Each fit is a few steps of the tiny DPO preset on the synthetic pairs, on the CPU.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from callbacks import NonFiniteError, NonFiniteGuard, SampleGenerations, TokenThroughput
from callbacks.throughput import count_tokens, not_timed
from datamodules import PreferenceDataModule
from datamodules.synthetic import make_pairs
from lightning_modules import DPO


def _data(**kw: Any) -> PreferenceDataModule:
    args: dict[str, Any] = dict(synthetic_size=64, batch_size=8, max_length=96, max_prompt_length=48,
                                tokenizer="tiny-llama")
    return PreferenceDataModule(**{**args, **kw})


def _trainer(tmp_path: Path, callbacks: list[Callback], max_steps: int = 4, **kw: Any) -> Trainer:
    args: dict[str, Any] = dict(
        max_steps=max_steps, accelerator="cpu", logger=CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    return Trainer(callbacks=callbacks, **{**args, **kw})


def _metric_rows(trainer: Trainer, key: str) -> list[tuple[int, float]]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    with path.open() as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


class BatchRecorder(Callback):
    """Records each training batch's num_tokens."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens.append(int(batch["num_tokens"]))


# ------------------------------------------------------------------------------------------------ throughput
def test_throughput_logs_rate_and_exact_token_total(tmp_path: Path) -> None:
    rec = BatchRecorder()
    cb = TokenThroughput(warmup_steps=1)  # log_every_n_steps: the trainer's
    trainer = _trainer(tmp_path, [rec, cb], max_steps=5, log_every_n_steps=2)
    trainer.fit(DPO(backbone="tiny-llama"), _data())

    assert len(rec.tokens) == 5 and all(n > 0 for n in rec.tokens)
    totals = _metric_rows(trainer, "throughput/tokens_total")
    # Logged after steps 2 and 4, and the remainder at the end of training (step 5).
    assert [t for _, t in totals] == [sum(rec.tokens[:2]), sum(rec.tokens[:4]), sum(rec.tokens)]
    assert cb.tokens_total == sum(rec.tokens)
    rates = _metric_rows(trainer, "throughput/tokens_per_sec")
    assert len(rates) == 3 and all(r > 0 and math.isfinite(r) for _, r in rates)
    # Rows line up with Lightning's own step numbering: train/loss is logged at the same step values.
    assert [s for s, _ in totals[:2]] == [s for s, _ in _metric_rows(trainer, "train/loss")] == [1, 3]


def test_throughput_expected_total_from_dataloader(tmp_path: Path) -> None:
    """The total matches the batches the seeded train loader yields (trainer's default log interval: end only)."""
    dm = _data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    expected = sum(int(b["num_tokens"]) for _, b in zip(range(3), loader, strict=False))

    cb = TokenThroughput()
    trainer = _trainer(tmp_path, [cb], max_steps=3)
    trainer.fit(DPO(backbone="tiny-llama"), _data())
    assert _metric_rows(trainer, "throughput/tokens_total") == [(3, float(expected))]
    assert cb.last_metrics["throughput/tokens_per_sec"] > 0


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _FakeTrainer:
    """The attributes of a Trainer that TokenThroughput reads (hashable, like a Trainer)."""

    def __init__(self, world: int = 1) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"), all_gather=self._all_gather)
        self.loggers = [SimpleNamespace(log_metrics=lambda m, step: self.logged.append((step, dict(m))))]
        self.global_step, self.log_every_n_steps, self.world_size = 0, 50, world
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0))

    def _all_gather(self, t: torch.Tensor) -> torch.Tensor:  # every rank reports the same numbers
        return torch.stack([t] * self.world_size) if self.world_size > 1 else t


def test_throughput_window_warmup_and_accumulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-made timings: warm-up steps are left out, the window keeps the last N steps, ranks are summed, and
    time spent in ``not_timed`` is not counted."""
    clock = _Clock()
    monkeypatch.setattr("callbacks.throughput.time.perf_counter", clock)
    trainer = _FakeTrainer(world=2)
    cb = TokenThroughput(window=2, warmup_steps=1, log_every_n_steps=1)
    cb.on_train_start(trainer, None)
    # (tokens, seconds) per batch; two micro-batches per optimizer step (gradient accumulation).
    steps = [((100, 10.0), (100, 10.0)), ((50, 1.0), (50, 1.0)), ((30, 0.5), (30, 0.5)), ((10, 0.25), (10, 0.25))]
    for micro in steps:
        for k, (tokens, seconds) in enumerate(micro):
            cb.on_train_batch_start(trainer, None, {}, 0)
            clock.t += seconds
            with not_timed(trainer):  # another callback's work inside the batch hooks: left out
                clock.t += 100.0
            if k == len(micro) - 1:
                trainer.global_step += 1
            cb.on_train_batch_end(trainer, None, None, {"num_tokens": torch.tensor(tokens)}, 0)
    rates = [m.get("throughput/tokens_per_sec") for _, m in trainer.logged]
    totals = [m["throughput/tokens_total"] for _, m in trainer.logged]
    assert totals == [400, 600, 720, 760]  # 2 ranks x 2 micro-batches
    assert rates[0] is None  # step 1 is warm-up: no rate yet
    assert rates[1] == pytest.approx(200 / 2.0)
    assert rates[2] == pytest.approx((200 + 120) / (2.0 + 1.0))
    assert rates[3] == pytest.approx((120 + 40) / (1.0 + 0.5))  # window of 2: step 2 dropped
    assert trainer.logged[-1][1]["throughput/tokens_per_sec_per_device"] == pytest.approx(rates[3] / 2)


def test_count_tokens_fallbacks() -> None:
    ids = torch.ones(2, 5, dtype=torch.long)
    assert count_tokens({"num_tokens": torch.tensor(7), "input_ids": ids}) == 7
    assert count_tokens({"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])}) == 5
    assert count_tokens({"input_ids": ids, "segment_ids": torch.tensor([[1, 2, 3, 0, 0], [1, 0, 0, 0, 0]])}) == 4
    assert count_tokens({"input_ids": ids}) == 10
    assert count_tokens((ids, ids)) == -1


# ----------------------------------------------------------------------------------------------- generations
def test_generations_written_and_train_mode_restored(tmp_path: Path) -> None:
    cb = SampleGenerations(every_n_steps=2, max_new_tokens=8)
    model = DPO(backbone="tiny-llama")
    trainer = _trainer(tmp_path, [cb], max_steps=5)
    trainer.fit(model, _data())

    path = Path(trainer.log_dir) / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # Steps 2 and 4, then the end of training (step 5); two validation prompts each.
    assert [r["step"] for r in rows] == [2, 2, 4, 4, 5, 5]
    assert all(isinstance(r["completion"], str) and r["completion"].strip() for r in rows)
    val = trainer.datamodule.datasets["val"].pairs
    assert [r["prompt"] for r in rows[:2]] == [model.tokenizer.decode(val[i].prompt) for i in range(2)]
    assert "<|start_header|>" not in rows[0]["completion"]  # decoded without special tokens
    assert model.policy.training and all(m.training for m in model.policy.modules())


def test_generations_string_prompts_use_chat_template(tmp_path: Path) -> None:
    """A string prompt is rendered exactly as the datamodule renders the same user message."""
    text = make_pairs(8, 1)[0]["prompt"]  # the first validation prompt of the synthetic set (seed + 1)
    cb = SampleGenerations(every_n_steps=0, prompts=[text], max_new_tokens=4, temperature=0.7)
    trainer = _trainer(tmp_path, [cb], max_steps=1)
    trainer.fit(DPO(backbone="tiny-llama"), _data())

    assert cb._inputs[0][1] == trainer.datamodule.datasets["val"].pairs[0].prompt
    rows = [json.loads(line) for line in (Path(trainer.log_dir) / "samples.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "prompt": text, "completion": rows[0]["completion"]}]


def test_generations_without_prompts_fail_before_training(tmp_path: Path) -> None:
    model = DPO(backbone="tiny-llama")
    trainer = _trainer(tmp_path, [SampleGenerations()], max_steps=1)
    from torch.utils.data import DataLoader

    dm = _data()
    dm.setup("fit")
    with pytest.raises(ValueError, match="pass prompts"):
        trainer.fit(model, train_dataloaders=DataLoader(dm.datasets["train"], collate_fn=lambda x: x))


# -------------------------------------------------------------------------------------------------- NaN guard
class Snapshot(Callback):
    """Copies the policy weights at the start of the batch of ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: dict[str, torch.Tensor] | None = None
        self.initial: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.weights = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}


class NaNLossAtStep2(DPO):
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 2 else loss


class InfGradAtStep1(DPO):
    def on_after_backward(self) -> None:
        if self.global_step == 1:
            self.policy.model.layers[0].mlp.down_proj.weight.grad[0, 0] = float("inf")


def _check_last_good(ckpt: Path, snap: Snapshot, model: LightningModule) -> None:
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    policy = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    assert snap.weights is not None and policy.keys() == snap.weights.keys()
    for k, v in policy.items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, snap.weights[k]), k
    # The earlier steps did train (so "equal to the weights before the bad step" is not "equal to the init").
    assert any(not torch.equal(v, snap.initial[k]) for k, v in policy.items())
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def test_nan_loss_stops_and_keeps_last_good(tmp_path: Path) -> None:
    snap = Snapshot(step=2)
    model = NaNLossAtStep2(backbone="tiny-llama")
    trainer = _trainer(tmp_path, [snap, NonFiniteGuard()], max_steps=6)
    ckpt = tmp_path / "checkpoints" / "last-good.ckpt"
    with pytest.raises(NonFiniteError, match=r"training loss is nan at global step 2") as err:
        trainer.fit(model, _data())
    assert str(ckpt) in str(err.value)
    assert trainer.global_step == 2
    _check_last_good(ckpt, snap, model)


def test_inf_grad_stops_and_names_parameter(tmp_path: Path) -> None:
    snap = Snapshot(step=1)
    model = InfGradAtStep1(backbone="tiny-llama")
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=False, save_top_k=0)
    trainer = _trainer(tmp_path, [snap, mc, NonFiniteGuard()], max_steps=6, enable_checkpointing=True)
    with pytest.raises(NonFiniteError, match=r"'policy\.model\.layers\.0\.mlp\.down_proj\.weight' is inf at global "
                                             r"step 1"):
        trainer.fit(model, _data())
    _check_last_good(tmp_path / "ckpts" / "last-good.ckpt", snap, model)


def test_guard_is_quiet_on_finite_training(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [NonFiniteGuard()], max_steps=2)
    trainer.fit(DPO(backbone="tiny-llama"), _data())
    assert trainer.global_step == 2
    assert not (tmp_path / "checkpoints" / "last-good.ckpt").exists()


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_short_names_and_nonfinite_error(tmp_path: Path) -> None:
    """train.py takes the callbacks by short name; a diverging run ends in NonFiniteError (non-zero exit)."""
    from train import main

    args = [
        "fit", "--model", "DPO", "--data", "PreferenceDataModule", "--data.synthetic_size", "64",
        "--data.max_length", "96", "--data.max_prompt_length", "48", "--model.lr", "1e30",
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.callbacks+=TokenThroughput", "--trainer.callbacks.log_every_n_steps=1",
        "--trainer.callbacks+=NonFiniteGuard", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
    ]
    with pytest.raises(NonFiniteError, match="training loss is (nan|inf) at global step 1") as err:
        main(args)
    ckpt = Path(str(err.value).rsplit(" ", 1)[-1])
    assert ckpt.name == "last-good.ckpt" and ckpt.is_file()
    header = (ckpt.parent.parent / "metrics.csv").read_text().splitlines()[0]
    assert "throughput/tokens_total" in header.split(",")


# -------------------------------------------------------------------------------------------- two processes
class NaNOnRank0AtStep2(DPO):
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_rank == 0 and self.global_step == 2 else loss


class ReportingGuard(NonFiniteGuard):
    """A NonFiniteGuard whose rank writes the error it raised, its batches' tokens and the token total to
    ``<out>/rank<r>.json`` (the launcher's child processes run no ``on_exception`` hooks)."""

    def __init__(self, out: Path, throughput: TokenThroughput) -> None:
        super().__init__()
        self.out, self.throughput, self.tokens = out, throughput, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens.append(int(batch["num_tokens"]))

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        try:
            super().on_before_backward(trainer, pl_module, loss)
        except NonFiniteError as e:
            report = {"tokens": self.tokens, "message": str(e), "tokens_total": self.throughput.tokens_total}
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
            if trainer.global_rank == 0:  # the launcher ends the other ranks once one fails: wait for their reports
                deadline = time.monotonic() + 60
                others = [self.out / f"rank{r}.json" for r in range(1, trainer.world_size)]
                while not all(f.exists() for f in others) and time.monotonic() < deadline:
                    time.sleep(0.05)  # poll for the other ranks' report files
            raise


def test_two_ranks_stop_together_and_tokens_are_summed(tmp_path: Path) -> None:
    """NaN on rank 0 only: both ranks raise (no deadlock), and the token total counts both ranks' batches."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    thr = TokenThroughput(log_every_n_steps=1)
    # SampleGenerations samples on rank 0 only; its output path is resolved on every rank (a broadcast collective).
    samples = SampleGenerations(every_n_steps=1, max_new_tokens=2, num_prompts=1)
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60))
    trainer = _trainer(tmp_path, [thr, samples, ReportingGuard(tmp_path, thr)], max_steps=6, devices=2,
                       strategy=strategy, logger=False)
    with pytest.raises(Exception, match="NonFiniteError"):
        trainer.fit(NaNOnRank0AtStep2(backbone="tiny-llama"), _data())
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert "training loss is nan at global step 2" in reports[0]["message"]
    assert "non-finite on another rank at global step 2" in reports[1]["message"]
    # Steps 0 and 1 completed on both ranks (the third batch of each rank never finished).
    assert all(len(r["tokens"]) == 2 for r in reports)
    assert reports[0]["tokens_total"] == reports[1]["tokens_total"] == sum(sum(r["tokens"]) for r in reports)
    assert (tmp_path / "checkpoints" / "last-good.ckpt").is_file()
    written = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in written] == [1, 2]  # steps 1 and 2 sampled on rank 0, no deadlock
