"""The suite's main job, end to end and offline: instruction-following preference data, then DPO on it.

Kim et al. 2025 (NAACL), "A Systematic Examination of Preference Learning through the Lens of
Instruction-Following": synthesise prompts with verifiable constraints, sample responses from a policy, build
rejection-sampling (RS) and MCTS preference pairs scored by the verifiers, train with DPO, and measure IFEval's
accuracies (Zhou et al. 2023) on held-out prompts. The steps, each writing into ``--out``:

1. ``prompts/``: unique prompts (``synth``), split into warm-up, pair-building and held-out sets (disjoint).
2. ``warmup.jsonl`` + ``policy-sft/``: the policy. The paper starts from pretrained instruct models; offline, the
   tiny preset is warmed up (SFT, :class:`~lightning_modules.dpo.sft.SFT`) on drafts of a scripted writer that follows
   each constraint with probability ``p_follow`` (:mod:`.drafts`), so it writes fluent responses that follow
   instructions only sometimes. With ``--backbone hf:<id or folder>`` (a real instruct model) set
   ``--warmup-prompts 0`` to skip this step.
3. ``eval/before.jsonl``: greedy responses of that policy on the held-out prompts, scored.
4. ``pairs/rs.jsonl``, ``pairs/mcts.jsonl``: RS pairs (``n`` samples per prompt, best vs worst) and MCTS pairs
   (sibling segments with a shared prefix), from the same policy (:mod:`.pairs`, :mod:`.mcts`).
5. ``pairs/train.jsonl``: both sets, deduplicated (:mod:`.curate`).
6. ``dpo/`` + ``policy-dpo/``: DPO (:class:`~lightning_modules.dpo.module.DPO`, reference = the warmed-up policy) on the
   pairs, with held-out accuracy logged during training by
   :class:`~pipelines.instruction_following.callback.IFEvalCallback`.
7. ``eval/after.jsonl`` and ``results.json``: the same evaluation of the trained policy; a before/after table is
   printed.

Resumable: every step writes atomically and is skipped when its output exists (the pair steps also resume inside,
chunk by chunk); ``job.json`` holds the settings, and a rerun with other settings in the same folder is refused.
The job holds an exclusive lock on ``--out`` while it runs (:func:`core.locks.output_lock`, the file
``<out>.lock`` beside the folder): a second job into the same folder stops at once with an error naming the first.

CLI::

    lm-suite if job --out runs/if_job          # the default: a few minutes, 2 CPUs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError, DataError, MissingExtraError
from core.io import atomic_write_text, jsonl_text
from core.locks import output_lock
from core.records import iter_jsonl
from pipelines.instruction_following.constraints import ConstraintError
from pipelines.instruction_following.drafts import DRAFTABLE, draft_for_record

__all__ = ["JobConfig", "add_arguments", "run", "run_job"]


@dataclass(frozen=True)
class JobConfig:
    """Settings of the main job; the defaults finish in a few minutes on 2 CPU cores."""

    out: str = "runs/if_job"
    seed: int = 0
    types: tuple[str, ...] = DRAFTABLE
    max_constraints: int = 3
    warmup_prompts: int = 2000
    pair_prompts: int = 960
    mcts_prompts: int = 32
    heldout_prompts: int = 200
    backbone: str = "tiny-llama"
    p_follow: float = 0.5
    sft_epochs: int = 6
    sft_lr: float = 1e-2
    sft_batch_size: int = 16
    rs_samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 96
    mcts_k: int = 3
    mcts_iterations: int = 6
    mcts_segment_tokens: int = 32
    dpo_epochs: int = 4
    dpo_lr: float = 1e-3
    dpo_beta: float = 0.1
    dpo_batch_size: int = 16
    eval_every_n_steps: int = 50
    threads: int = 0  # torch threads; 0 = the number of CPUs this process may use, at most 2 (see NOTES.md)

    def __post_init__(self) -> None:
        for name in ("pair_prompts", "heldout_prompts", "rs_samples", "sft_epochs", "dpo_epochs", "max_constraints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.mcts_prompts <= self.pair_prompts:
            raise ConfigError(f"mcts_prompts must lie in [0, pair_prompts], got {self.mcts_prompts}")
        if self.warmup_prompts < 0 or not 0.0 <= self.p_follow <= 1.0:
            raise ConfigError("warmup_prompts must be >= 0 and p_follow in [0, 1]")
        if self.warmup_prompts and any(t not in DRAFTABLE for t in self.types):
            raise ConfigError(f"the warm-up drafts cover only {', '.join(DRAFTABLE)}; got types {list(self.types)}")

    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (not ``out`` or ``threads``)."""
        d = dataclasses.asdict(self)
        d.pop("out"), d.pop("threads")
        d["types"] = list(self.types)
        return d


@dataclass
class _Log:
    """Step timings, printed as the job goes."""

    seconds: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, output: Path, work: Callable[[], Any]) -> None:
        if output.exists():
            print(f"[{name}] kept from an earlier run: {output}", flush=True)
            self.seconds[name] = 0.0
            return
        print(f"[{name}] ...", flush=True)
        start = time.perf_counter()
        work()
        self.seconds[name] = time.perf_counter() - start
        print(f"[{name}] done in {self.seconds[name]:.1f} s -> {output}", flush=True)


# ------------------------------------------------------------------------------------------------ steps


def _write_prompt_sets(cfg: JobConfig, folder: Path) -> None:
    """One synthesised stream, cut into disjoint held-out, pair and warm-up sets (held-out first, fixed by seed)."""
    from pipelines.instruction_following.synth import synthesize

    n_total = cfg.heldout_prompts + cfg.pair_prompts + cfg.warmup_prompts
    records = synthesize(n_total, cfg.seed, 1, cfg.max_constraints, include=cfg.types)
    cuts = {
        "heldout": records[: cfg.heldout_prompts],
        "pairs": records[cfg.heldout_prompts : cfg.heldout_prompts + cfg.pair_prompts],
        "warmup": records[cfg.heldout_prompts + cfg.pair_prompts :],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in cuts.items():
        atomic_write_text(folder / f"{name}.jsonl", jsonl_text(part))
    atomic_write_text(folder / "mcts.jsonl", jsonl_text(cuts["pairs"][: cfg.mcts_prompts]))


def _write_drafts(cfg: JobConfig, prompts: Path, out: Path) -> None:
    rng = random.Random(f"drafts:{cfg.seed}")
    rows = [
        {"prompt": r["prompt"], "response": str(draft_for_record(r, rng, cfg.p_follow))} for _, r in iter_jsonl(prompts)
    ]
    atomic_write_text(out, jsonl_text(rows))


def _trainer(root: Path, epochs: int, callbacks: list[Any]) -> Any:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    return Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=str(root), logger=CSVLogger(str(root)),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
        callbacks=callbacks,
    )


def _warm_up(cfg: JobConfig, data: Path, root: Path, out: Path) -> None:
    import lightning.pytorch as pl

    from datamodules.sft import SFTDataModule
    from lightning_modules.dpo.sft import SFT

    pl.seed_everything(cfg.seed, verbose=False)
    model = SFT(backbone=cfg.backbone, lr=cfg.sft_lr, warmup_steps=20, lr_schedule="cosine", init_seed=cfg.seed)
    dm = SFTDataModule(train_files=str(data), batch_size=cfg.sft_batch_size, max_length=256, max_prompt_length=192,
                       seed=cfg.seed)
    _trainer(root, cfg.sft_epochs, []).fit(model, dm)
    model.export_pretrained(out)


def _generator(policy: str | Path, cfg: JobConfig, temperature: float) -> Any:
    from core.generation import HFGenerator

    return HFGenerator(str(policy), temperature=temperature, batch_size=64, seed=cfg.seed)


def _evaluate(cfg: JobConfig, policy: str | Path, prompts: Path, out: Path) -> None:
    from pipelines.instruction_following.evaluation import evaluate_policy, write_eval
    from pipelines.instruction_following.pairs import read_prompts

    result = evaluate_policy(_generator(policy, cfg, 0.0), read_prompts(prompts), max_new_tokens=cfg.max_new_tokens)
    write_eval(result, out)


def _rs_pairs(cfg: JobConfig, policy: str | Path, prompts: Path, out: Path) -> None:
    from pipelines.instruction_following.pairs import write_rs_pairs

    report = write_rs_pairs(
        prompts, out, _generator(policy, cfg, cfg.temperature), n=cfg.rs_samples, max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed, meta={"policy": str(policy), "temperature": cfg.temperature},
    )
    print(f"  {report.pairs} RS pairs from {report.prompts} prompts ({report.failures} failed)")


def _mcts_pairs(cfg: JobConfig, policy: str | Path, prompts: Path, out: Path) -> None:
    from pipelines.instruction_following.mcts import MCTSConfig, write_mcts_pairs

    config = MCTSConfig(
        k=cfg.mcts_k, iterations=cfg.mcts_iterations, segment_tokens=cfg.mcts_segment_tokens,
        max_new_tokens=cfg.max_new_tokens, max_depth=4, margin=0.3,
    )
    if cfg.mcts_prompts == 0:
        atomic_write_text(out, "")
        return
    report = write_mcts_pairs(
        prompts, out, _generator(policy, cfg, cfg.temperature), config,
        meta={"policy": str(policy), "temperature": cfg.temperature},
    )
    print(f"  {report.pairs} MCTS pairs from {report.prompts} prompts ({report.failures} failed)")


def _merge_pairs(sources: list[Path], out: Path) -> None:
    from pipelines.instruction_following.curate import dedupe, read_pairs

    pairs = dedupe(read_pairs(sources))
    if not pairs:
        raise DataError(f"no preference pairs in {', '.join(map(str, sources))}: the policy's samples never differed")
    atomic_write_text(out, jsonl_text(pairs))


def _train_dpo(cfg: JobConfig, policy: str | Path, pairs: Path, heldout: Path, root: Path, out: Path) -> None:
    import lightning.pytorch as pl

    from datamodules.preference import PreferenceDataModule
    from lightning_modules.dpo.module import DPO
    from pipelines.instruction_following.callback import IFEvalCallback

    pl.seed_everything(cfg.seed, verbose=False)
    model = DPO(backbone=str(policy), beta=cfg.dpo_beta, lr=cfg.dpo_lr, warmup_steps=10, lr_schedule="linear")
    dm = PreferenceDataModule(train_files=str(pairs), batch_size=cfg.dpo_batch_size, max_length=320,
                              max_prompt_length=192, seed=cfg.seed)
    watch = IFEvalCallback(str(heldout), every_n_steps=cfg.eval_every_n_steps, limit=64,
                           max_new_tokens=cfg.max_new_tokens, on_fit_end=False, save_rows=False)
    _trainer(root, cfg.dpo_epochs, [watch]).fit(model, dm)
    model.export_pretrained(out)
    for entry in watch.history:
        print(f"  step {entry['step']}: held-out (first 64) instruction-level strict {entry['instruction_strict']:.3f}")


# ------------------------------------------------------------------------------------------------ the job


def _check_settings(cfg: JobConfig, out: Path) -> None:
    path = out / "job.json"
    settings = json.dumps(cfg.settings(), indent=1, sort_keys=True)
    if path.is_file():
        if path.read_text(encoding="utf-8") != settings:
            raise ConfigError(f"{out}: holds a job run with other settings (see {path}); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, settings)


def _set_threads(threads: int) -> int:
    import torch

    if threads <= 0:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(2, available)
    torch.set_num_threads(threads)
    return threads


def run_job(cfg: JobConfig) -> dict[str, Any]:
    """Run (or resume) the job; returns ``results.json``'s content (accuracies before/after, counts, timings)."""
    with output_lock(Path(cfg.out)):
        return _run_job_locked(cfg)


def _run_job_locked(cfg: JobConfig) -> dict[str, Any]:
    """:func:`run_job`'s work, under the lock on its folder."""
    from pipelines.instruction_following.evaluation import format_table, per_type_accuracy

    start = time.perf_counter()
    out = Path(cfg.out)
    _check_settings(cfg, out)
    threads = _set_threads(cfg.threads)
    print(f"instruction-following job in {out} ({threads} torch threads)", flush=True)
    log = _Log()
    p = out / "prompts"
    sft_policy = out / "policy-sft" if cfg.warmup_prompts else None
    log.step("synth", p / "mcts.jsonl", lambda: _write_prompt_sets(cfg, p))
    if sft_policy is not None:
        log.step("drafts", out / "warmup.jsonl", lambda: _write_drafts(cfg, p / "warmup.jsonl", out / "warmup.jsonl"))
        log.step("sft", sft_policy, lambda: _warm_up(cfg, out / "warmup.jsonl", out / "sft", sft_policy))
    policy: str | Path = sft_policy or cfg.backbone  # any name the backbone factory takes
    log.step("eval-before", out / "eval" / "before.jsonl",
             lambda: _evaluate(cfg, policy, p / "heldout.jsonl", out / "eval" / "before.jsonl"))
    log.step("rs", out / "pairs" / "rs.jsonl",
             lambda: _rs_pairs(cfg, policy, p / "pairs.jsonl", out / "pairs" / "rs.jsonl"))
    log.step("mcts", out / "pairs" / "mcts.jsonl",
             lambda: _mcts_pairs(cfg, policy, p / "mcts.jsonl", out / "pairs" / "mcts.jsonl"))
    train = out / "pairs" / "train.jsonl"
    log.step("pairs", train, lambda: _merge_pairs([out / "pairs" / "rs.jsonl", out / "pairs" / "mcts.jsonl"], train))
    log.step("dpo", out / "policy-dpo",
             lambda: _train_dpo(cfg, policy, train, p / "heldout.jsonl", out / "dpo", out / "policy-dpo"))
    log.step("eval-after", out / "eval" / "after.jsonl",
             lambda: _evaluate(cfg, out / "policy-dpo", p / "heldout.jsonl", out / "eval" / "after.jsonl"))

    results = {name: _read_eval(out / "eval" / f"{name}.jsonl") for name in ("before", "after")}
    print()
    print(format_table(results))
    by_type = {name: per_type_accuracy(r.rows) for name, r in results.items()}
    print(f"\n{'instruction type (strict)':40s} {'before':>9s} {'after':>9s}")
    for cid in sorted(by_type["before"]):
        cells = [f"{by_type[n][cid][0]}/{by_type[n][cid][1]}" for n in ("before", "after")]
        print(f"{cid:40s} {cells[0]:>9s} {cells[1]:>9s}")
    summary = {
        "before": results["before"].as_dict(),
        "after": results["after"].as_dict(),
        "per_type_before": {k: list(v) for k, v in by_type["before"].items()},
        "per_type_after": {k: list(v) for k, v in by_type["after"].items()},
        "pairs": {m: _count_lines(out / "pairs" / f"{m}.jsonl") for m in ("rs", "mcts", "train")},
        "seconds": {**log.seconds, "total": time.perf_counter() - start},
        "settings": cfg.settings(),
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1))
    gain = summary["after"]["instruction_strict"] - summary["before"]["instruction_strict"]
    print(f"\nheld-out instruction-level strict accuracy: {summary['before']['instruction_strict']:.3f} -> "
          f"{summary['after']['instruction_strict']:.3f} ({gain:+.3f}); "
          f"{summary['seconds']['total']:.0f} s in all; results in {out / 'results.json'}")
    return summary


def _read_eval(path: Path) -> Any:
    from pipelines.instruction_following.evaluation import EvalResult, EvalRow

    rows = [EvalRow.from_json(obj) for _, obj in iter_jsonl(path)]
    return EvalResult.from_rows(rows)


def _count_lines(path: Path) -> int:
    return sum(1 for _ in iter_jsonl(path)) if path.is_file() else 0


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``job`` command's arguments: one flag per :class:`JobConfig` field (``--pair-prompts`` ...)."""
    for f in dataclasses.fields(JobConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "types":
            parser.add_argument(flag, default=",".join(f.default), help="constraint types, comma-separated")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=f"default: {f.default}")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``job`` command."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(JobConfig)}
    values["types"] = tuple(t.strip() for t in values["types"].split(",") if t.strip())
    try:
        run_job(JobConfig(**values))
    except (ConfigError, ConstraintError, DataError, MissingExtraError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
