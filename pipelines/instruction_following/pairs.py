"""Rejection-sampling (RS) preference pairs for instruction following (Kim et al. 2025, NAACL).

Kim et al. 2025, "A Systematic Examination of Preference Learning through the Lens of Instruction-Following",
curate pairs two ways; this module is the first (RS), :mod:`.mcts` the second. For each prompt (an IFEval-format
record ``key, prompt, instruction_id_list, kwargs, complexity``):

1. sample ``n`` whole responses from the policy (a :class:`~core.generation.Generator`);
2. score each strictly (:func:`.scoring.score`): the fraction of the prompt's constraints followed, plus the
   all-followed flag; an empty (or whitespace-only) response scores 0;
3. chosen = a best-scoring sample (the first one, in sampling order); rejected by ``rule``:

   - ``worst``: a worst-scoring sample (the first one);
   - ``random_lower``: a uniformly random sample scoring strictly below the chosen;
   - ``min_gap``: a uniformly random sample scoring at least ``gap`` below the chosen (no pair if none);

   if the chosen and rejected scores tie, the prompt gives no pair. Blank samples are left out of the pairing
   (they score 0, but no pair holds an empty response).

Output records (one JSONL line per pair; the prompt/chosen/rejected strings the suite's PreferenceDataModule
reads, the rest carried as extras)::

    {"prompt", "chosen", "rejected", "chosen_score", "rejected_score",
     "constraints": {"instruction_id_list", "kwargs"}, "complexity", "method": "rs", "shared_prefix": "", "key"}

Resumption (:func:`run_resumable`, shared with :mod:`.mcts`): the prompts are processed in chunks of
``chunk_size``; each finished chunk's results are written atomically to ``<out>.parts/partNNNNN.jsonl``; a rerun
skips the chunks already there (a prompt is done once its chunk's part exists, whether it gave pairs or not) and
then assembles ``out`` atomically and removes the parts. Sampling is seeded per call and the rejection rule per
prompt, so an interrupted and resumed run writes the same file as an uninterrupted one. Prompts whose generation
still fails after ``retries`` further attempts are written, with their ``error``, to ``<out>.failures.jsonl``
(never silently dropped); ``<out>.parts/meta.json`` guards against resuming with other prompts or settings (parts
without it are discarded, never reused), and a lock on ``out`` stops a second run into it at once.

CLI::

    lm-suite if rs --prompts p.jsonl --out pairs.jsonl --model tiny-llama --n 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DataError, MissingExtraError
from core.generation import GenerationFailure, Generator, build_generator, generate_with_retries
from core.io import parts_dir
from core.locks import output_lock
from core.records import iter_jsonl
from pipelines.instruction_following.constraints import ConstraintError
from pipelines.instruction_following.scoring import read_ifeval_inputs, score
from pipelines.resumable import RunReport, failures_path, run_resumable

__all__ = [
    "RULES",
    "PromptRecord",
    "RunReport",
    "add_arguments",
    "failures_path",
    "make_pairs_rs",
    "parts_dir",
    "prompts_fingerprint",
    "read_prompts",
    "rs_pairs_for_prompt",
    "run",
    "run_resumable",
    "score_response",
    "select_pair",
    "write_rs_pairs",
]

RULES = ("worst", "random_lower", "min_gap")
DEFAULT_CHUNK_SIZE = 64


# ------------------------------------------------------------------------------------------------ prompts, scores


@dataclass(frozen=True)
class PromptRecord:
    """One validated prompt: its text, constraints (``instruction_id_list``/``kwargs``) and complexity."""

    index: int
    key: Any
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]
    complexity: int

    @property
    def constraints(self) -> list[tuple[str, dict[str, Any]]]:
        return list(zip(self.instruction_id_list, self.kwargs, strict=True))

    def constraints_json(self) -> dict[str, Any]:
        return {"instruction_id_list": list(self.instruction_id_list), "kwargs": [dict(k) for k in self.kwargs]}


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """Validated prompt records of an IFEval-format JSONL (``complexity`` defaults to the number of constraints)."""
    inputs = read_ifeval_inputs(path)
    extras = {lineno: obj for lineno, obj in iter_jsonl(path)}
    out: list[PromptRecord] = []
    for i, item in enumerate(inputs):
        complexity = extras.get(item.line, {}).get("complexity", len(item.instruction_id_list))
        if not isinstance(complexity, int) or isinstance(complexity, bool):
            raise DataError(f"{item.where}: field 'complexity': expected an integer, got {complexity!r}")
        out.append(
            PromptRecord(i, item.key, item.prompt, list(item.instruction_id_list), list(item.kwargs), complexity)
        )
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def score_response(response: str, record: PromptRecord) -> float:
    """Strict score (fraction of constraints followed); empty or whitespace-only responses score 0."""
    if not response.strip():
        return 0.0
    return score(response, record.constraints).score


def pair_record(
    record: PromptRecord,
    chosen: str,
    rejected: str,
    chosen_score: float,
    rejected_score: float,
    method: str,
    shared_prefix: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One output line (see the module docstring)."""
    return {
        "prompt": record.prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_score": chosen_score,
        "rejected_score": rejected_score,
        "constraints": record.constraints_json(),
        "complexity": record.complexity,
        "method": method,
        "shared_prefix": shared_prefix,
        "key": record.key,
        **extra,
    }


def failure_record(record: PromptRecord, failure: GenerationFailure, method: str) -> dict[str, Any]:
    return {
        "key": record.key,
        "prompt": record.prompt,
        "method": method,
        "error": failure.error,
        "attempts": failure.attempts,
    }


# ------------------------------------------------------------------------------------------------ rejection sampling


def select_pair(
    scores: Sequence[float], rule: str = "worst", gap: float = 0.5, rng: random.Random | None = None
) -> tuple[int, int] | None:
    """Indices ``(chosen, rejected)`` of the samples by ``rule`` (module docstring), or None for no pair."""
    if rule not in RULES:
        raise ValueError(f"unknown rejection rule {rule!r}: expected one of {', '.join(RULES)}")
    if not scores:
        return None
    rng = rng or random.Random(0)
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    top = scores[best]
    if rule == "worst":
        rejected = min(range(len(scores)), key=lambda i: (scores[i], i))
    else:
        limit = top - gap if rule == "min_gap" else top
        eps = 1e-9
        pool = [i for i, s in enumerate(scores) if (s <= limit + eps if rule == "min_gap" else s < limit)]
        if not pool:
            return None
        rejected = rng.choice(pool)
    if scores[rejected] >= top:  # a tie: no contrast
        return None
    return best, rejected


def _prompt_rng(seed: int, record: PromptRecord) -> random.Random:
    return random.Random(f"{seed}:{record.index}:{record.key!r}")


def rs_pairs_for_prompt(
    record: PromptRecord, samples: Sequence[str], rule: str = "worst", gap: float = 0.5, seed: int = 0
) -> list[dict[str, Any]]:
    """Score ``samples`` of one prompt and return its pair (a list of zero or one record).

    Blank samples score 0 but are never paired: a preference file holds no empty response (the DataModule
    rejects them as bad input), and "write something" is not the contrast these pairs are meant to teach.
    """
    kept = [s for s in samples if s.strip()]
    scores = [score_response(s, record) for s in kept]
    picked = select_pair(scores, rule, gap, _prompt_rng(seed, record))
    if picked is None:
        return []
    c, r = picked
    return [pair_record(record, kept[c], kept[r], scores[c], scores[r], "rs", "")]


def make_pairs_rs(
    records: Sequence[PromptRecord],
    generator: Generator,
    *,
    n: int = 4,
    max_new_tokens: int = 256,
    rule: str = "worst",
    gap: float = 0.5,
    seed: int = 0,
    retries: int = 2,
) -> list[dict[str, Any]]:
    """RS over ``records``: pair records, plus failure records (with ``error``) for prompts that failed."""
    if n < 2:
        raise ValueError(f"rejection sampling needs n >= 2 samples per prompt, got {n}")
    results = generate_with_retries(generator, [r.prompt for r in records], n, max_new_tokens, retries=retries)
    out: list[dict[str, Any]] = []
    for record, samples in zip(records, results, strict=True):
        if isinstance(samples, GenerationFailure):
            out.append(failure_record(record, samples, "rs"))
        else:
            out.extend(rs_pairs_for_prompt(record, samples, rule, gap, seed))
    return out


def prompts_fingerprint(records: Sequence[PromptRecord]) -> str:
    """sha256 of the prompts' content: the input half of a resumable run's meta."""
    rows = [[r.key, r.prompt, r.instruction_id_list, r.kwargs] for r in records]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def write_rs_pairs(
    prompts: str | Path,
    out: str | Path,
    generator: Generator,
    *,
    n: int = 4,
    max_new_tokens: int = 256,
    rule: str = "worst",
    gap: float = 0.5,
    seed: int = 0,
    retries: int = 2,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    meta: dict[str, Any] | None = None,
) -> RunReport:
    """RS pairs of every prompt in the JSONL ``prompts`` into ``out``, resumably (module docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown rejection rule {rule!r}: expected one of {', '.join(RULES)}")
    records = read_prompts(prompts)
    settings = dict(method="rs", n=n, max_new_tokens=max_new_tokens, rule=rule, gap=gap, seed=seed, **(meta or {}))

    def process(chunk: Sequence[PromptRecord]) -> list[dict[str, Any]]:
        return make_pairs_rs(
            chunk, generator, n=n, max_new_tokens=max_new_tokens, rule=rule, gap=gap, seed=seed, retries=retries
        )

    return run_resumable(records, out, process, fingerprint=prompts_fingerprint(records), chunk_size=chunk_size,
                         meta=settings)


# ------------------------------------------------------------------------------------------------ CLI


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``rs`` and ``mcts``: inputs, outputs, the backend and resumption."""
    parser.add_argument("--prompts", required=True, help="prompts JSONL (IFEval format, e.g. from `synth`)")
    parser.add_argument("--out", required=True, help="output pairs JSONL (failures go to <out>.failures.jsonl)")
    parser.add_argument("--model", default="tiny-llama", help="policy model name (default: tiny-llama)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="generation backend (default: hf)")
    parser.add_argument("--device", default="cpu", help="device of the hf backend (default: cpu)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens of a whole response (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--retries", type=int, default=2, help="further attempts of a failed prompt (default: 2)")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
        help=f"prompts per atomically written part; the unit of resumption (default: {DEFAULT_CHUNK_SIZE})",
    )


def generator_from_args(args: argparse.Namespace) -> Generator:
    return build_generator(
        args.backend, args.model, temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
        seed=args.seed, device=args.device,
    )


def generator_meta(args: argparse.Namespace) -> dict[str, Any]:
    return dict(model=args.model, backend=args.backend, temperature=args.temperature, top_p=args.top_p)


def print_report(report: RunReport, what: str) -> None:
    print(
        f"wrote {report.pairs} {what} pairs from {report.prompts} prompts to {report.out} in {report.seconds:.2f} s "
        f"({report.parts} parts: {report.parts_written} written, {report.parts_kept} kept from an earlier run)"
    )
    if report.failures:
        print(f"{report.failures} prompts failed; see {failures_path(report.out)}")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``rs`` command's arguments (used by ``lm-suite if rs``)."""
    add_generator_arguments(parser)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (default: 4)")
    parser.add_argument("--rule", choices=RULES, default="worst", help="how the rejected is picked (default: worst)")
    parser.add_argument("--gap", type=float, default=0.5, help="least score gap of the min_gap rule (default: 0.5)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``rs`` command."""
    try:
        with output_lock(args.out):  # before the model is loaded: a second run into --out stops at once
            report = write_rs_pairs(
                args.prompts, args.out, generator_from_args(args), n=args.n, max_new_tokens=args.max_new_tokens,
                rule=args.rule, gap=args.gap, seed=args.seed, retries=args.retries, chunk_size=args.chunk_size,
                meta=generator_meta(args),
            )
    except (ConstraintError, DataError, MissingExtraError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report, "RS")
    return 0
