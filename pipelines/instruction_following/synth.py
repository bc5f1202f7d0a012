"""Synthetic instruction-following prompts: a base writing task plus a conflict-free set of verifiable constraints.

Kim et al. 2025 ("A Systematic Examination of Preference Learning through the Lens of Instruction-Following",
NAACL 2025) generate 48,000 unique prompts, each an ordinary request combined with constraints of IFEval's
verifiable kinds (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models"), so that every
response can be scored automatically; the prompt's complexity is its number of constraints. Their generator is not
public; this one is ours:

- A prompt = one base task of :mod:`.tasks` (drawn uniformly) + ``k`` constraints, ``k`` drawn uniformly from
  ``min_constraints..max_constraints`` (or with ``complexity_weights``). The constraints come from
  :func:`~.constraints.sample_constraints`, so no two conflict (IFEval's conflict table,
  :data:`~.constraints.CONFLICTS`; every type conflicts with itself, so a type appears at most once), and keywords
  come from the topic's related words. A draw that cannot reach ``k`` (rare:
  ``detectable_format:constrained_response`` admits no partner) is redrawn, so ``complexity`` is exactly the drawn
  ``k``. So is a set that no response can follow although its types are compatible (our filter,
  :func:`_satisfiable`: for example a forbidden word inside the required end phrase, or ``punctuation:no_comma``
  with a repeated request that has commas).
- The prompt text is the task sentence followed by one phrasing of each constraint (a random one of its
  phrasings, a period added where a phrasing ends without one), joined by spaces. ``combination:repeat_prompt``
  always comes last and its ``prompt_to_repeat`` is the whole text before it (the request the model must repeat;
  the phrasing says the instruction itself is not part of it).
- Every prompt is unique: a draw whose text, or whose task with the same constraint set (ids and arguments, in any
  order or phrasing), was already made is discarded and drawing goes on.
- Deterministic and prefix-stable: one ``random.Random(seed)`` stream, so the first ``m`` prompts of
  ``synthesize(n, seed)`` are those of ``synthesize(m, seed)`` for any ``m <= n``; keys are ``0..n-1``.
- Constraint types: all 25 of IFEval by default (a choice: the paper uses 23, and which two it leaves out is not
  known to us); ``include`` restricts the draw to some types and ``exclude`` drops types (for example
  ``language:response_language``, whose verifier needs the optional ``langdetect`` extra).

Records are IFEval's input lines (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``; read back by
:func:`~.scoring.read_ifeval_inputs`) plus ``complexity``, ``task`` (the base task sentence), ``topic`` and
``template``.

Files: :func:`write_prompts` (the ``lm-suite if synth`` command) writes the
records in parts of ``chunk_size`` lines into ``<out>.parts/``, each part atomically, then assembles ``<out>``
atomically and removes the parts. Generation is cheap (48,000 prompts take a few seconds), so a re-run with the
same arguments regenerates the deterministic stream and keeps each part already on disk whose bytes match, writing
only the missing (or stale) ones: a killed run, re-run, ends with exactly the file an uninterrupted run writes,
with no prompt duplicated or lost. A part is kept only when its bytes are those of this run's settings (so parts of
another seed or other options are never reused: they are rewritten), and the run holds an exclusive lock on
``<out>`` (:func:`core.locks.output_lock`): a second run into the same file stops at once with an error naming the
first.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.io import atomic_path, atomic_write_text, jsonl_text, parts_dir
from core.locks import output_lock
from pipelines.instruction_following.constraints import (
    CONSTRAINT_TYPES,
    Constraint,
    ConstraintError,
    SampleContext,
    constraint,
    get_constraint_type,
    sample_constraints,
)
from pipelines.instruction_following.tasks import BASE_TASKS, BaseTask

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CONSTRAINTS",
    "REPEAT_PROMPT",
    "SynthReport",
    "add_arguments",
    "iter_prompts",
    "parts_dir",
    "run",
    "synthesize",
    "write_prompts",
]

DEFAULT_MAX_CONSTRAINTS = 4
DEFAULT_CHUNK_SIZE = 4000
REPEAT_PROMPT = "combination:repeat_prompt"
_DRAW_ATTEMPTS = 100  # redraws of one constraint set before ``k`` is declared unreachable
_MAX_DUPLICATES = 10_000  # consecutive duplicate draws before the prompt space is declared exhausted


@dataclass(frozen=True)
class _Plan:
    """Validated synthesis options."""

    pool: list[str] | None  # constraint ids to draw from (None: all, the sampler's default order)
    ks: tuple[int, ...]
    weights: tuple[float, ...] | None
    tasks: Sequence[BaseTask]


def _plan(
    min_constraints: int,
    max_constraints: int,
    exclude: Iterable[str],
    complexity_weights: Sequence[float] | None,
    tasks: Sequence[BaseTask] | None,
    include: Iterable[str] | None = None,
) -> _Plan:
    if not 1 <= min_constraints <= max_constraints:
        raise ValueError(
            f"need 1 <= min_constraints <= max_constraints, got min_constraints={min_constraints}, "
            f"max_constraints={max_constraints}"
        )
    excluded: set[str] = set()
    for cid in exclude:
        get_constraint_type(cid)  # ConstraintError (a ValueError) for an unknown id
        excluded.add(cid)
    included = None if include is None else {cid for cid in include if get_constraint_type(cid)}
    if included is None and not excluded:
        pool = None
    else:
        pool = sorted((set(CONSTRAINT_TYPES) if included is None else included) - excluded)
    if pool is not None and not pool:
        raise ValueError("every constraint type is excluded")
    ks = tuple(range(min_constraints, max_constraints + 1))
    weights = None
    if complexity_weights is not None:
        weights = tuple(float(w) for w in complexity_weights)
        if len(weights) != len(ks):
            raise ValueError(
                f"complexity_weights needs one weight per complexity {ks[0]}..{ks[-1]} ({len(ks)}), got {len(weights)}"
            )
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"complexity_weights must be >= 0 with at least one > 0, got {list(weights)}")
    tasks = BASE_TASKS if tasks is None else tasks
    if not tasks:
        raise ValueError("no base tasks to draw from")
    return _Plan(pool, ks, weights, tasks)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1] in ".?!" else text + "."


def _render(rng: random.Random, task: BaseTask, drawn: list[Constraint]) -> tuple[str, list[Constraint]]:
    """The prompt text and the constraints in prompt order (``combination:repeat_prompt`` last, bound to the text)."""
    ordered = [c for c in drawn if c.id != REPEAT_PROMPT]
    parts = [_sentence(task.text)]
    parts.extend(_sentence(c.describe(rng)) for c in ordered)
    if len(ordered) < len(drawn):
        repeat = constraint(REPEAT_PROMPT, {"prompt_to_repeat": " ".join(parts)})
        parts.append(_sentence(repeat.describe(rng)))
        ordered.append(repeat)
    return " ".join(parts), ordered


def _forced_text(constraints: Sequence[Constraint], case: str) -> str:
    """Text that any response following ``constraints`` must contain, in ``case`` where the verifier allows any case.

    Keywords (and a keyword that must occur at least N times, N times), a paragraph's first word, the end phrase,
    the postscript marker and the repeated prompt are matched case-insensitively, so they take ``case`` ("lower"
    or "upper"); section headers are matched as written.
    """
    free: list[str] = []
    fixed: list[str] = []
    for c in constraints:
        kw = c.kwargs
        if c.id == "keywords:existence":
            free.extend(kw["keywords"])
        elif c.id == "keywords:frequency" and kw["relation"] == "at least":
            free.extend([kw["keyword"]] * kw["frequency"])
        elif c.id == "length_constraints:nth_paragraph_first_word":
            free.append(kw["first_word"])
        elif c.id == "startend:end_checker":
            free.append(kw["end_phrase"])
        elif c.id == "detectable_content:postscript":
            free.append(kw["postscript_marker"])
        elif c.id == REPEAT_PROMPT:
            free.append(kw["prompt_to_repeat"])
        elif c.id == "detectable_format:multiple_sections":
            fixed.extend(f"{kw['section_spliter']} {i}" for i in range(1, kw["num_sections"] + 1))
    cased = [t.upper() if case == "upper" else t.lower() for t in free]
    return "\n".join(cased + fixed)


# Verifiers that only get harder as text is added ("at most" kinds), in the relation that makes them so.
_UPPER_BOUNDS = {
    "keywords:forbidden_words": None,
    "keywords:frequency": "less than",
    "keywords:letter_frequency": "less than",
    "change_case:capital_word_frequency": "less than",
    "punctuation:no_comma": None,
}
_RELATION_FIELD = {
    "keywords:letter_frequency": "let_relation",
    "change_case:capital_word_frequency": "capital_relation",
}


def _satisfiable(constraints: Sequence[Constraint]) -> bool:
    """False when the constraints provably cannot all be followed together (our filter, beyond the conflict table).

    IFEval's conflict table (:data:`~.constraints.CONFLICTS`) is about types; some combinations of compatible types
    fail for particular arguments or phrasings: a forbidden word inside the required end phrase, a comma in the
    prompt that must be repeated under ``punctuation:no_comma``, ``Section`` headers in an all-capitals response,
    more ``SECTION`` headers than the allowed capital words, fewer than one sentence. Each "at most" verifier is
    run on the text the other constraints force into every response (:func:`_forced_text`); if that text already
    breaks it, no response can follow all of them.
    """
    for c in constraints:
        kw = c.kwargs
        if c.id == "length_constraints:number_sentences" and kw["relation"] == "less than" and kw["num_sentences"] <= 1:
            return False  # a non-empty response has at least one sentence
        if c.id in ("change_case:english_capital", "change_case:english_lowercase"):
            case = "upper" if c.id.endswith("capital") else "lower"
            forced = _forced_text([o for o in constraints if o is not c], case)
            if forced != (forced.upper() if case == "upper" else forced.lower()):
                return False
        elif c.id in _UPPER_BOUNDS:
            relation = _UPPER_BOUNDS[c.id]
            if relation is not None and kw[_RELATION_FIELD.get(c.id, "relation")] != relation:
                continue
            forced = _forced_text([o for o in constraints if o is not c], "lower")
            if forced.strip() and not c.check(forced):
                return False
    return True


def _draw_prompt(rng: random.Random, k: int, task: BaseTask, pool: list[str] | None) -> tuple[str, list[Constraint]]:
    """``k`` compatible, jointly satisfiable constraints for ``task`` and the prompt text (redrawn until so)."""
    context = SampleContext(prompt=task.text, topic_words=task.words)
    for _ in range(_DRAW_ATTEMPTS):
        drawn = sample_constraints(rng, k, context, ids=pool)
        if len(drawn) != k:
            continue
        prompt, constraints = _render(rng, task, drawn)
        if _satisfiable(constraints):
            return prompt, constraints
    raise ValueError(f"cannot draw {k} mutually compatible constraints from the allowed types; lower max_constraints")


def _signature(task: BaseTask, constraints: list[Constraint]) -> tuple[str, tuple[str, ...]]:
    """The task and the constraint set regardless of order and phrasing (``prompt_to_repeat`` follows the text)."""
    items = sorted(c.id if c.id == REPEAT_PROMPT else f"{c.id}:{c.kwargs!r}" for c in constraints)
    return task.text, tuple(items)


def iter_prompts(
    seed: int,
    *,
    min_constraints: int = 1,
    max_constraints: int = DEFAULT_MAX_CONSTRAINTS,
    exclude: Iterable[str] = (),
    complexity_weights: Sequence[float] | None = None,
    tasks: Sequence[BaseTask] | None = None,
    include: Iterable[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """The endless deterministic stream of unique prompt records for ``seed`` (see the module docstring).

    Raises ``ValueError`` for bad options, and when 10,000 draws in a row repeat earlier prompts (the prompt space
    of a narrow configuration is exhausted).
    """
    plan = _plan(min_constraints, max_constraints, exclude, complexity_weights, tasks, include)
    rng = random.Random(seed)
    seen_text: set[str] = set()
    seen_sets: set[tuple[str, tuple[str, ...]]] = set()
    key = 0
    duplicates = 0
    while True:
        task = rng.choice(plan.tasks)
        k = rng.randint(plan.ks[0], plan.ks[-1]) if plan.weights is None else rng.choices(plan.ks, plan.weights)[0]
        prompt, constraints = _draw_prompt(rng, k, task, plan.pool)
        signature = _signature(task, constraints)
        if prompt in seen_text or signature in seen_sets:
            duplicates += 1
            if duplicates >= _MAX_DUPLICATES:
                raise ValueError(f"only {key} unique prompt(s) could be made with these options ({duplicates} repeats)")
            continue
        duplicates = 0
        seen_text.add(prompt)
        seen_sets.add(signature)
        yield {
            "key": key,
            "prompt": prompt,
            "instruction_id_list": [c.id for c in constraints],
            "kwargs": [dict(c.kwargs) for c in constraints],
            "complexity": len(constraints),
            "task": task.text,
            "topic": task.topic,
            "template": task.template,
        }
        key += 1


def synthesize(
    n: int,
    seed: int,
    min_constraints: int = 1,
    max_constraints: int = DEFAULT_MAX_CONSTRAINTS,
    *,
    exclude: Iterable[str] = (),
    complexity_weights: Sequence[float] | None = None,
    tasks: Sequence[BaseTask] | None = None,
    include: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """``n`` unique prompt records: the first ``n`` of :func:`iter_prompts` (Kim et al. 2025 make 48,000)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = iter_prompts(
        seed,
        min_constraints=min_constraints,
        max_constraints=max_constraints,
        exclude=exclude,
        complexity_weights=complexity_weights,
        tasks=tasks,
        include=include,
    )
    return list(islice(stream, n))


# ------------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class SynthReport:
    """What :func:`write_prompts` did: parts kept from an earlier run vs written now, and the time it took."""

    out: Path
    n: int
    parts: int
    parts_kept: int
    parts_written: int
    seconds: float
    complexity: dict[int, int] = field(default_factory=dict)


def _write_part(path: Path, text: str) -> None:
    """Write one part atomically (a function of its own so that tests can simulate a kill between parts)."""
    atomic_write_text(path, text)


def write_prompts(
    out: str | Path,
    n: int,
    seed: int,
    *,
    min_constraints: int = 1,
    max_constraints: int = DEFAULT_MAX_CONSTRAINTS,
    exclude: Iterable[str] = (),
    complexity_weights: Sequence[float] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    include: Iterable[str] | None = None,
) -> SynthReport:
    """Write :func:`synthesize`'s ``n`` records to the JSONL file ``out``, resumably (see the module docstring)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; the output must be a file path")
    with output_lock(out):
        start = time.perf_counter()
        stream = iter_prompts(
            seed,
            min_constraints=min_constraints,
            max_constraints=max_constraints,
            exclude=exclude,
            complexity_weights=complexity_weights,
            include=include,
        )
        folder = parts_dir(out)
        folder.mkdir(parents=True, exist_ok=True)
        n_parts = -(-n // chunk_size)
        paths = [folder / f"part{i:05d}.jsonl" for i in range(n_parts)]
        kept = written = 0
        complexity: Counter[int] = Counter()
        for i, path in enumerate(paths):
            records = list(islice(stream, min(chunk_size, n - i * chunk_size)))
            complexity.update(r["complexity"] for r in records)
            text = jsonl_text(records)
            if path.is_file() and path.read_bytes() == text.encode("utf-8"):
                kept += 1
                continue
            _write_part(path, text)
            written += 1
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a run killed while assembling
            stale.unlink(missing_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            for path in paths:
                handle.write(path.read_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        shutil.rmtree(folder)
        return SynthReport(
            out, n, n_parts, kept, written, time.perf_counter() - start, dict(sorted(complexity.items()))
        )


# ------------------------------------------------------------------------------------------------ CLI


def _ids(values: Sequence[str] | None) -> list[str]:
    return [cid.strip() for value in values or () for cid in value.split(",") if cid.strip()]


def _weights(value: str) -> list[float]:
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``synth`` command's arguments (also used by ``lm-suite if synth``)."""
    parser.add_argument("--n", type=int, default=48_000, help="number of unique prompts (default: 48000, the paper's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed and options, same file")
    parser.add_argument("--out", required=True, help="output JSONL (IFEval input format plus extras)")
    parser.add_argument("--min-constraints", type=int, default=1, help="fewest constraints per prompt (default: 1)")
    parser.add_argument(
        "--max-constraints",
        type=int,
        default=DEFAULT_MAX_CONSTRAINTS,
        help=f"most constraints per prompt (default: {DEFAULT_MAX_CONSTRAINTS})",
    )
    parser.add_argument(
        "--complexity-weights",
        type=_weights,
        default=None,
        help="comma-separated weights of the complexities min..max (default: uniform)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="ID[,ID...]",
        help="constraint types to leave out (repeatable), e.g. language:response_language",
    )
    parser.add_argument(
        "--types",
        action="append",
        default=None,
        metavar="ID[,ID...]",
        help="draw only from these constraint types (repeatable; default: all 25)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"records per atomically written part; the unit of resumption (default: {DEFAULT_CHUNK_SIZE})",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``synth`` command; print what was written and how long it took."""
    try:
        report = write_prompts(
            args.out,
            args.n,
            args.seed,
            min_constraints=args.min_constraints,
            max_constraints=args.max_constraints,
            exclude=_ids(args.exclude),
            complexity_weights=args.complexity_weights,
            chunk_size=args.chunk_size,
            include=_ids(args.types) if args.types else None,
        )
    except (ConstraintError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    histogram = ", ".join(f"{k}: {v}" for k, v in report.complexity.items())
    print(
        f"wrote {report.n} unique prompts to {report.out} in {report.seconds:.2f} s "
        f"({report.parts} parts: {report.parts_written} written, {report.parts_kept} kept from an earlier run)"
    )
    print(f"complexity (constraints per prompt): {histogram}")
    return 0
