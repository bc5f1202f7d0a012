"""Tests of instruction-following evaluation: evaluate_policy (IFEval accuracies, Zhou et al. 2023) and its callback.

The accuracies of a scripted generator are computed by hand; the callback runs in a real few-step CPU fit of the
tiny DPO preset and is checked against an independent recomputation.
"""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from core.errors import ConfigError, DataError
from core.generation import HFGenerator
from core.io import jsonl_text
from datamodules.preference import PreferenceDataModule
from lightning_modules.dpo.module import DPO
from pipelines.instruction_following.callback import IFEvalCallback, sharded_reason
from pipelines.instruction_following.evaluation import (
    EvalResult,
    evaluate_policy,
    format_table,
    per_type_accuracy,
    write_eval,
)
from pipelines.instruction_following.pairs import PromptRecord, read_prompts
from pipelines.instruction_following.scoring import read_ifeval_inputs
from pipelines.instruction_following.synth import synthesize

LOWER, NO_COMMA = "change_case:english_lowercase", "punctuation:no_comma"


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """The tiny model on one thread: as fast, and steady when other processes share the CPUs (no thread spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScriptedGenerator:
    """Answers each prompt with a fixed response; raises whenever a prompt containing ``FAIL`` is in the call."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def generate(
        self, prompts: list[str], n: int, max_new_tokens: int, prefixes: list[str] | None = None,
        stop: list[str] | None = None,
    ) -> list[list[str]]:
        self.calls.append(list(prompts))
        if any("FAIL" in p for p in prompts):
            raise RuntimeError("backend down")
        return [[self.answers[p]] * n for p in prompts]


# (prompt, instruction ids, response) and the hand-scored strict / loose flags.
CASES = [
    ("p1 all good", [LOWER, NO_COMMA], "hello world"),  # strict [T, T]
    ("p2 all bad", [LOWER, NO_COMMA], "Hello, world"),  # strict [F, F]; one line: no loose variant helps
    ("p3 comma", [NO_COMMA], "a, b"),  # [F]
    ("p4 preamble", [LOWER, NO_COMMA], "Sure, Here:\nall lowercase here"),  # strict [F, F]; loose drops line 1: [T, T]
    ("p5 FAIL", [NO_COMMA], "unused"),  # generation fails -> [F], with its error
    ("p6 empty", [LOWER], ""),  # empty -> [F] (it has no comma, yet follows nothing)
]


def _records() -> list[PromptRecord]:
    return [PromptRecord(i, f"k{i}", p, ids, [{} for _ in ids], len(ids)) for i, (p, ids, _) in enumerate(CASES)]


def _generator() -> ScriptedGenerator:
    return ScriptedGenerator({p: r for p, _, r in CASES})


# ------------------------------------------------------------------------------------------------ evaluate_policy
def test_evaluate_policy_hand_computed_accuracies() -> None:
    gen = _generator()
    result = evaluate_policy(gen, _records(), max_new_tokens=8, retries=1)
    acc = result.accuracy
    # 6 prompts, 9 instructions. Strict: p1 only (2 instructions). Loose: p1 and p4 (4 instructions).
    assert (acc.n_prompts, acc.n_instructions) == (6, 9)
    assert acc.prompt_strict == pytest.approx(1 / 6) and acc.instruction_strict == pytest.approx(2 / 9)
    assert acc.prompt_loose == pytest.approx(2 / 6) and acc.instruction_loose == pytest.approx(4 / 9)
    assert result.failures == 1
    assert [r.strict for r in result.rows] == [[True, True], [False, False], [False], [False, False], [False], [False]]
    assert [r.loose for r in result.rows] == [[True, True], [False, False], [False], [True, True], [False], [False]]
    assert per_type_accuracy(result.rows) == {LOWER: (1, 4), NO_COMMA: (1, 5)}
    # One call for all prompts, then per prompt; the failing prompt gets 1 + retries attempts.
    assert gen.calls[0] == [p for p, _, _ in CASES] and sum(c == ["p5 FAIL"] for c in gen.calls) == 2


def test_failed_and_empty_prompts_are_kept_with_zero_scores() -> None:
    result = evaluate_policy(_generator(), _records())
    failed, empty = result.rows[4], result.rows[5]
    assert (failed.key, failed.prompt, failed.response) == ("k4", "p5 FAIL", "")
    assert failed.error == "RuntimeError: backend down"
    assert failed.strict == failed.loose == [False]
    assert empty.error is None and empty.response == "" and empty.strict == empty.loose == [False]
    assert all(r.error is None for r in result.rows[:4])


def test_evaluate_policy_takes_ifeval_inputs_and_empty_everywhere_scores_zero(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl_text(
        {"key": i, "prompt": p, "instruction_id_list": ids, "kwargs": [{} for _ in ids]} for i, (p, ids, _) in
        enumerate(CASES[:4])
    ))
    inputs = read_ifeval_inputs(path)
    answers = {p: r for p, _, r in CASES}
    assert evaluate_policy(ScriptedGenerator(answers), inputs).accuracy.prompt_strict == pytest.approx(1 / 4)
    blank = evaluate_policy(ScriptedGenerator({p: " \n" for p, _, _ in CASES}), inputs)
    d = blank.as_dict()
    assert [d[k] for k in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")] == [0.0] * 4
    with pytest.raises(ValueError, match="at least one"):
        evaluate_policy(ScriptedGenerator(answers), [])


def test_write_eval_and_format_table(tmp_path: Path) -> None:
    after = evaluate_policy(_generator(), _records())
    before = EvalResult.from_rows([after.rows[1]])  # 1 prompt, nothing followed
    path = write_eval(after, tmp_path / "sub" / "eval.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["key"] for x in lines] == [f"k{i}" for i in range(6)]
    assert lines[3]["follow_instruction_list_loose"] == [True, True]
    assert lines[3]["follow_all_instructions_strict"] is False and lines[3]["follow_all_instructions_loose"] is True
    assert lines[4]["error"] == "RuntimeError: backend down" and lines[0]["error"] is None
    assert not list(path.parent.glob(".*tmp"))
    table = format_table({"before": before, "after": after})
    rows = table.splitlines()
    assert rows[0].split() == ["metric", "before", "after"]
    assert rows[2].split() == ["prompt", "strict", "0.0000", f"{1 / 6:.4f}"]
    assert rows[5].split() == ["instruction", "loose", "0.0000", f"{4 / 9:.4f}"]
    assert rows[6].split() == ["failures", "0/1", "1/6"]
    assert len({len(r) for r in rows}) == 1  # fixed width


# ------------------------------------------------------------------------------------------------ callback
class ModeProbe(Callback):
    """Placed after IFEvalCallback: records the policy's mode and the tokenizer's padding side after each batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, str]] = []
        self.steps_started = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.steps_started += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        modes = {m.training for m in pl_module.policy.modules()}
        self.seen.append((trainer.global_step, modes == {True}, pl_module.tokenizer.padding_side))


def _prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text(jsonl_text(synthesize(6, seed=0, exclude=["language:response_language"])))
    return path


def _data(small: bool = False) -> PreferenceDataModule:
    """The committed tiny pairs, or (``small``) 16 synthetic ones, quicker to tokenise for tests that need any data."""
    files: dict[str, Any] = dict(synthetic_size=16) if small else dict(train_files="data/tiny/train.jsonl")
    return PreferenceDataModule(**files, batch_size=4, max_length=128, max_prompt_length=64)


def _fit(tmp_path: Path, callbacks: list[Callback], max_steps: int = 4, small: bool = False,
         **kw: Any) -> tuple[Trainer, DPO]:
    args: dict[str, Any] = dict(
        max_steps=max_steps, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer = Trainer(**{**args, **kw})
    model = DPO(backbone="tiny-llama")
    trainer.fit(model, _data(small))
    return trainer, model


def test_callback_in_a_fit_matches_an_independent_evaluation(tmp_path: Path) -> None:
    prompts = _prompts_file(tmp_path)
    cb = IFEvalCallback(prompts=str(prompts), every_n_steps=2, max_new_tokens=8, batch_size=8)
    probe = ModeProbe()
    trainer, model = _fit(tmp_path, [cb, probe])

    # Steps 2 and 4; the end of training is step 4 again, already evaluated with the same weights.
    assert [(h["step"], h["fit_end"]) for h in cb.history] == [(2, False), (4, False)]
    assert all(h["n_prompts"] == 6 and h["failures"] == 0 for h in cb.history)
    assert probe.seen == [(s, True, "right") for s in (1, 2, 3, 4)]  # train mode and padding side restored
    assert model.policy.training

    # Logged values: the CSV rows (Lightning's logger step: global_step - 1) and callback_metrics.
    with (Path(trainer.logger.log_dir) / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("ifeval/prompt_strict")]
    keys = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")
    assert [int(r["step"]) for r in logged] == [1, 3]
    for row, h in zip(logged, cb.history, strict=True):
        assert [float(row[f"ifeval/{k}"]) for k in keys] == [pytest.approx(h[k]) for k in keys]
    assert [float(trainer.callback_metrics[f"ifeval/{k}"]) for k in keys] == [pytest.approx(cb.history[-1][k])
                                                                             for k in keys]

    # Independent recomputation on the final policy: same prompts, greedy, same settings -> the same numbers.
    gen = HFGenerator(model=model.policy, tokenizer=model.tokenizer, temperature=0.0, batch_size=8, device="cpu")
    again = evaluate_policy(gen, read_prompts(prompts), max_new_tokens=8)
    assert {k: cb.history[-1][k] for k in keys} == {k: again.as_dict()[k] for k in keys}
    rows_file = Path(trainer.log_dir) / "ifeval_step4.jsonl"
    assert (Path(trainer.log_dir) / "ifeval_step2.jsonl").exists() and rows_file.exists()
    written = [json.loads(x) for x in rows_file.read_text().splitlines()]
    assert [w["response"] for w in written] == [r.response for r in again.rows]
    assert [w["follow_instruction_list_strict"] for w in written] == [r.strict for r in again.rows]


def test_callback_evaluates_at_fit_end_with_limit(tmp_path: Path) -> None:
    cb = IFEvalCallback(prompts=str(_prompts_file(tmp_path)), every_n_steps=0, max_new_tokens=8, limit=3,
                        save_rows=False)
    trainer, model = _fit(tmp_path, [cb], max_steps=1, small=True)
    assert [(h["step"], h["fit_end"], h["n_prompts"]) for h in cb.history] == [(1, True, 3)]
    assert model.policy.training and not list(Path(trainer.log_dir).glob("ifeval_step*.jsonl"))


def test_bad_prompts_file_fails_before_training(tmp_path: Path) -> None:
    good = synthesize(1, seed=0, exclude=["language:response_language"])[0]
    bad = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["no_such:constraint"], "kwargs": [{}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(jsonl_text([good, bad]))
    probe = ModeProbe()
    with pytest.raises(DataError, match=rf"{path}:2: .*unknown constraint id 'no_such:constraint'"):
        _fit(tmp_path, [IFEvalCallback(prompts=str(path), every_n_steps=1), probe], small=True)
    assert probe.steps_started == 0


def test_sharded_strategies_are_skipped_and_bad_arguments_refused() -> None:
    from core.strategies import FSDP2Strategy

    assert sharded_reason(FSDPStrategy()) == "FSDPStrategy shards the weights across ranks"
    assert sharded_reason(FSDP2Strategy()) == "FSDP2Strategy shards the weights across ranks"
    assert sharded_reason(DDPStrategy()) is None
    with pytest.raises(ConfigError, match="every_n_steps"):
        IFEvalCallback(prompts="x.jsonl", every_n_steps=-1)
    with pytest.raises(ConfigError, match="limit"):
        IFEvalCallback(prompts="x.jsonl", limit=0)


class HistoryDump(Callback):
    """Placed after IFEvalCallback: writes its history to ``rank{N}.json`` (DDP children do not share memory)."""

    def __init__(self, cb: IFEvalCallback, folder: Path) -> None:
        self.cb, self.folder = cb, folder

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dump = {"history": self.cb.history, "threads": torch.get_num_threads()}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(dump))


def test_ddp_ranks_share_the_accuracies_over_all_prompts(tmp_path: Path) -> None:
    """Two CPU processes, each answering half the prompts: both log the one-process accuracies over all six."""
    prompts = _prompts_file(tmp_path)
    cb = IFEvalCallback(prompts=str(prompts), every_n_steps=0, max_new_tokens=8, batch_size=1)
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60))
    _, model = _fit(tmp_path, [cb, HistoryDump(cb, tmp_path)], max_steps=1, small=True, devices=2, strategy=strategy,
                    logger=False)
    dumps = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    histories = [d["history"] for d in dumps]
    assert histories[0] == histories[1] and [(h["step"], h["n_prompts"]) for h in histories[0]] == [(1, 6)]
    # The same numbers as one process on the trained weights (brought back from rank 0); batch 1: no padding, and
    # the ranks' thread count (Lightning lowers it per process), so that the same matmuls pick the same tokens.
    threads = torch.get_num_threads()
    torch.set_num_threads(dumps[0]["threads"])
    try:
        gen = HFGenerator(model=model.policy, tokenizer=model.tokenizer, temperature=0.0, batch_size=1, device="cpu")
        again = evaluate_policy(gen, read_prompts(prompts), max_new_tokens=8).as_dict()
    finally:
        torch.set_num_threads(threads)
    assert {k: histories[0][0][k] for k in again} == again
    # Rank 0's rows file holds all six prompts in file order.
    written = [json.loads(x) for x in (tmp_path / "ifeval_step1.jsonl").read_text().splitlines()]
    assert [w["key"] for w in written] == [r.key for r in read_prompts(prompts)]
