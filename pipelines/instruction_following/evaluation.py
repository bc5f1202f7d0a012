"""Evaluate a policy on IFEval-format prompts: generate one response each, score it, report IFEval's accuracies.

Reference: Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models" (IFEval). Each prompt gets
one response (``n=1``, greedy when the generator is), scored strictly and loosely by :mod:`.scoring`:

- **prompt-level** accuracy: the fraction of prompts whose instructions are *all* followed;
- **instruction-level** accuracy: the fraction of all (prompt, instruction) entries followed;
- **strict** checks the response as given, **loose** also accepts IFEval's eight relaxed variants of it.

A prompt whose generation still fails after ``retries`` further attempts is not dropped: it is scored as an empty
response (0 on every instruction, strict and loose) and its row carries the error, so that a flaky backend lowers the
accuracy instead of silently shrinking the denominator. ``failures`` counts such prompts.

Shared by :class:`~pipelines.instruction_following.callback.IFEvalCallback` (during training) and by end-to-end
jobs that compare a policy before and after training (:func:`format_table`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.generation import GenerationFailure, Generator, generate_with_retries
from core.io import atomic_write_text, jsonl_text
from pipelines.instruction_following.pairs import PromptRecord
from pipelines.instruction_following.scoring import (
    IFEvalAccuracy,
    IFEvalInput,
    ScoreResult,
    as_constraints,
    ifeval_accuracy,
    score_strict_loose,
)

__all__ = [
    "EvalResult",
    "EvalRow",
    "evaluate_policy",
    "format_table",
    "generate_rows",
    "per_type_accuracy",
    "write_eval",
]


@dataclass(frozen=True)
class EvalRow:
    """One evaluated prompt. ``strict[i]`` / ``loose[i]``: whether ``instruction_id_list[i]`` is followed.

    ``error`` is the generation error of a prompt that failed after its retries (its ``response`` is then ``""``
    and every flag False), else None.
    """

    key: Any
    prompt: str
    response: str
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]
    error: str | None = None

    @property
    def scores(self) -> tuple[ScoreResult, ScoreResult]:
        """``(strict, loose)`` as :class:`~.scoring.ScoreResult`, for :func:`~.scoring.ifeval_accuracy`."""
        return ScoreResult.from_flags(self.strict), ScoreResult.from_flags(self.loose)

    def to_json(self) -> dict[str, Any]:
        """IFEval's per-prompt output fields, plus ``error``."""
        return {
            "key": self.key,
            "prompt": self.prompt,
            "response": self.response,
            "instruction_id_list": list(self.instruction_id_list),
            "follow_instruction_list_strict": list(self.strict),
            "follow_instruction_list_loose": list(self.loose),
            "follow_all_instructions_strict": all(self.strict),
            "follow_all_instructions_loose": all(self.loose),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EvalRow:
        """The row :meth:`to_json` wrote (to read back an evaluation file)."""
        return cls(
            obj["key"], obj["prompt"], obj["response"], list(obj["instruction_id_list"]),
            list(obj["follow_instruction_list_strict"]), list(obj["follow_instruction_list_loose"]), obj.get("error"),
        )


@dataclass(frozen=True)
class EvalResult:
    """IFEval's four accuracies (Zhou et al. 2023) over ``rows``, and how many prompts failed to generate."""

    accuracy: IFEvalAccuracy
    rows: list[EvalRow]
    failures: int

    @classmethod
    def from_rows(cls, rows: Iterable[EvalRow]) -> EvalResult:
        """Accuracies of already scored rows (for example gathered from several ranks); at least one row."""
        rows = list(rows)
        if not rows:
            raise ValueError("an evaluation needs at least one prompt")
        return cls(ifeval_accuracy(r.scores for r in rows), rows, sum(r.error is not None for r in rows))

    def as_dict(self) -> dict[str, float | int]:
        """The four accuracies, the counts and ``failures``, as plain numbers (short keys, as logged)."""
        acc = self.accuracy
        return {
            "prompt_strict": acc.prompt_strict,
            "instruction_strict": acc.instruction_strict,
            "prompt_loose": acc.prompt_loose,
            "instruction_loose": acc.instruction_loose,
            "n_prompts": acc.n_prompts,
            "n_instructions": acc.n_instructions,
            "failures": self.failures,
        }


def _score_row(record: PromptRecord | IFEvalInput, out: list[str] | GenerationFailure) -> EvalRow:
    ids = list(record.instruction_id_list)
    if isinstance(out, GenerationFailure):
        zeros = [False] * len(ids)
        return EvalRow(record.key, record.prompt, "", ids, zeros, list(zeros), error=out.error)
    response = out[0]
    if not response.strip():  # IFEval: an empty response follows nothing (scoring agrees; made sure of here)
        zeros = [False] * len(ids)
        return EvalRow(record.key, record.prompt, response, ids, zeros, list(zeros))
    strict, loose = score_strict_loose(response, as_constraints(record.constraints))
    return EvalRow(record.key, record.prompt, response, ids, list(strict.per_constraint), list(loose.per_constraint))


def generate_rows(
    generator: Generator,
    records: Sequence[PromptRecord] | Sequence[IFEvalInput],
    *,
    max_new_tokens: int = 128,
    retries: int = 1,
) -> list[EvalRow]:
    """One response per record (all in one :func:`~core.generation.generate_with_retries` call), scored; may be empty.

    Failed prompts become rows with ``error`` set and every flag False (module docstring).
    """
    if not records:
        return []
    outs = generate_with_retries(
        generator, [r.prompt for r in records], n=1, max_new_tokens=max_new_tokens, retries=retries
    )
    return [_score_row(rec, out) for rec, out in zip(records, outs, strict=True)]


def evaluate_policy(
    generator: Generator,
    records: Sequence[PromptRecord] | Sequence[IFEvalInput],
    *,
    max_new_tokens: int = 128,
    retries: int = 1,
) -> EvalResult:
    """IFEval accuracies (Zhou et al. 2023) of ``generator``'s responses to ``records`` (at least one).

    Prompt-level and instruction-level, strict and loose; a prompt that fails to generate scores 0 and is kept.
    """
    if not records:
        raise ValueError("evaluate_policy needs at least one prompt record")
    return EvalResult.from_rows(generate_rows(generator, records, max_new_tokens=max_new_tokens, retries=retries))


def per_type_accuracy(rows: Iterable[EvalRow]) -> dict[str, tuple[int, int]]:
    """Strict ``(followed, total)`` per instruction id over ``rows``, sorted by id."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        for cid, ok in zip(row.instruction_id_list, row.strict, strict=True):
            c = counts.setdefault(cid, [0, 0])
            c[0] += bool(ok)
            c[1] += 1
    return {cid: (c[0], c[1]) for cid, c in sorted(counts.items())}


def write_eval(result: EvalResult, path: str | Path) -> Path:
    """Write ``result``'s rows as JSONL (:meth:`EvalRow.to_json`), atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, jsonl_text(row.to_json() for row in result.rows))
    return path


_TABLE_ROWS = (
    ("prompt strict", "prompt_strict"),
    ("instruction strict", "instruction_strict"),
    ("prompt loose", "prompt_loose"),
    ("instruction loose", "instruction_loose"),
    ("failures", "failures"),
)


def format_table(named_results: Mapping[str, EvalResult]) -> str:
    """A fixed-width table of several results side by side (columns: the names, e.g. ``before`` / ``after``).

    Accuracies are printed with four decimals, ``failures`` as a count out of the prompts evaluated.
    """
    if not named_results:
        raise ValueError("format_table needs at least one named result")
    names = list(named_results)
    cells: list[list[str]] = []
    for label, field in _TABLE_ROWS:
        row = [label]
        for name in names:
            d = named_results[name].as_dict()
            row.append(f"{d['failures']}/{d['n_prompts']}" if field == "failures" else f"{d[field]:.4f}")
        cells.append(row)
    header = ["metric", *names]
    widths = [max(len(r[i]) for r in (header, *cells)) for i in range(len(header))]
    lines = []
    for r in (header, *cells):
        lines.append("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
