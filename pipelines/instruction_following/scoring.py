"""Score responses against verifiable constraints: strict and loose, per response and IFEval accuracies.

Reference: Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models" (IFEval).

- **Strict**: each constraint's verifier on the response as given; an empty or whitespace-only response follows
  nothing.
- **Loose** (IFEval's upper bound): a constraint is followed if its verifier accepts any of eight variants of the
  response (:func:`loose_variants`): the response; it with every ``*`` removed; without its first line; without its
  last line; without both; and the last three with ``*`` removed. The shortened variants are stripped, and empty
  variants are skipped. So a preamble line ("Sure, here it is:") or a closing remark, or markdown emphasis, does not
  fail an instruction in the loose form.
- **Response score** (Kim et al. 2025, the suite's choice): the fraction of the prompt's constraints followed,
  plus the all-followed flag (:class:`ScoreResult`).
- **Accuracies** (:func:`ifeval_accuracy`): prompt-level = fraction of prompts whose constraints are all
  followed; instruction-level = fraction of all (prompt, constraint) entries followed; each strict and loose.

Files (``/work/shared/FORMATS.md``, "IFEval input"): inputs are IFEval's JSONL (``key``, ``prompt``,
``instruction_id_list``, ``kwargs``; ``kwargs[i]`` belongs to ``instruction_id_list[i]``, keys with ``null``
values are ignored); responses are ``{"prompt", "response"}`` lines matched to inputs by prompt. Bad lines raise
:class:`~core.errors.DataError` naming ``path:line`` and the field.

CLI::

    lm-suite if score --input input.jsonl --responses responses.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from core.errors import DataError, MissingExtraError
from core.records import iter_jsonl
from pipelines.instruction_following.constraints import Constraint, ConstraintError, constraint, get_constraint_type
from pipelines.instruction_following.text import ResponseText

__all__ = [
    "ConstraintLike",
    "IFEvalAccuracy",
    "IFEvalInput",
    "PromptResult",
    "ScoreResult",
    "as_constraints",
    "evaluate",
    "evaluate_files",
    "ifeval_accuracy",
    "loose_variants",
    "main",
    "read_ifeval_inputs",
    "read_responses",
    "score",
    "score_strict_loose",
]

#: A bound :class:`Constraint`, an ``(id, kwargs)`` pair, or a ``{"id", "kwargs"}`` mapping.
ConstraintLike: TypeAlias = Constraint | tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]


@dataclass(frozen=True)
class ScoreResult:
    """How one response fares on its prompt's constraints.

    ``per_constraint[i]``: whether constraint ``i`` is followed; ``score``: their mean; ``all_pass``: all followed.
    """

    per_constraint: list[bool]
    score: float
    all_pass: bool

    @classmethod
    def from_flags(cls, flags: Sequence[bool]) -> ScoreResult:
        flags = list(flags)
        return cls(flags, sum(flags) / len(flags), all(flags))


def as_constraints(constraints: Iterable[ConstraintLike]) -> list[Constraint]:
    """Bind every entry (see :data:`ConstraintLike`); raises :class:`ConstraintError` for bad ones."""
    out: list[Constraint] = []
    for item in constraints:
        if isinstance(item, Constraint):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(constraint(item["id"], item.get("kwargs")))
        else:
            cid, kwargs = item
            out.append(constraint(cid, kwargs))
    return out


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants of ``response``, in IFEval's order (duplicates and empties included).

    The response; it with ``*`` removed; without the first line; without the last line; without both; the last
    three with ``*`` removed. Lines are split on ``\\n``; the shortened variants are stripped.
    """
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        no_first,
        no_last,
        no_both,
        no_first.replace("*", ""),
        no_last.replace("*", ""),
        no_both.replace("*", ""),
    ]


class _LooseViews:
    """The distinct non-empty loose variants other than the response itself, built on first use."""

    __slots__ = ("_response", "_views")

    def __init__(self, response: str) -> None:
        self._response = response
        self._views: list[ResponseText] | None = None

    def views(self) -> list[ResponseText]:
        if self._views is None:
            seen = {self._response}
            views: list[ResponseText] = []
            for variant in loose_variants(self._response)[1:]:
                if variant not in seen and variant.strip():
                    seen.add(variant)
                    views.append(ResponseText(variant))
            self._views = views
        return self._views


def _strict_flags(view: ResponseText, bound: Sequence[Constraint]) -> list[bool]:
    return [c.check(view) for c in bound]


def _loose_flags(view: ResponseText, bound: Sequence[Constraint], strict: Sequence[bool]) -> list[bool]:
    others = _LooseViews(view.text)
    out: list[bool] = []
    for c, passed in zip(bound, strict, strict=True):
        out.append(passed or any(c.check(v) for v in others.views()))
    return out


def _prepare(constraints: Iterable[ConstraintLike]) -> list[Constraint]:
    bound = as_constraints(constraints)
    if not bound:
        raise ValueError("scoring needs at least one constraint")
    return bound


def score(response: str, constraints: Iterable[ConstraintLike], *, loose: bool = False) -> ScoreResult:
    """Strict (default) or loose score of ``response`` on ``constraints`` (at least one)."""
    bound = _prepare(constraints)
    view = ResponseText(response)
    flags = _strict_flags(view, bound)
    if loose:
        flags = _loose_flags(view, bound, flags)
    return ScoreResult.from_flags(flags)


def score_strict_loose(response: str, constraints: Iterable[ConstraintLike]) -> tuple[ScoreResult, ScoreResult]:
    """Strict and loose scores together; the loose form re-checks only the constraints that fail strictly."""
    bound = _prepare(constraints)
    view = ResponseText(response)
    strict = _strict_flags(view, bound)
    loose = _loose_flags(view, bound, strict)
    return ScoreResult.from_flags(strict), ScoreResult.from_flags(loose)


# ------------------------------------------------------------------------------------------------ accuracies


@dataclass(frozen=True)
class PromptResult:
    """One scored prompt: its strict and loose :class:`ScoreResult` (plus where it came from, when read)."""

    prompt: str
    response: str
    instruction_id_list: list[str]
    strict: ScoreResult
    loose: ScoreResult
    key: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "prompt": self.prompt,
            "response": self.response,
            "instruction_id_list": self.instruction_id_list,
            "follow_instruction_list_strict": self.strict.per_constraint,
            "follow_instruction_list_loose": self.loose.per_constraint,
            "follow_all_instructions_strict": self.strict.all_pass,
            "follow_all_instructions_loose": self.loose.all_pass,
        }


@dataclass(frozen=True)
class IFEvalAccuracy:
    """IFEval's four accuracies, each in [0, 1], with the counts they are taken over."""

    prompt_strict: float
    instruction_strict: float
    prompt_loose: float
    instruction_loose: float
    n_prompts: int
    n_instructions: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "prompt_level_strict": self.prompt_strict,
            "instruction_level_strict": self.instruction_strict,
            "prompt_level_loose": self.prompt_loose,
            "instruction_level_loose": self.instruction_loose,
            "n_prompts": self.n_prompts,
            "n_instructions": self.n_instructions,
        }


def ifeval_accuracy(results: Iterable[PromptResult | tuple[ScoreResult, ScoreResult]]) -> IFEvalAccuracy:
    """Prompt-level and instruction-level accuracy, strict and loose, over scored prompts.

    Each item is a :class:`PromptResult` or a ``(strict, loose)`` pair of :class:`ScoreResult`.
    """
    n_prompts = n_instructions = 0
    prompt_ok = [0, 0]
    instruction_ok = [0, 0]
    for item in results:
        strict, loose = (item.strict, item.loose) if isinstance(item, PromptResult) else item
        if len(strict.per_constraint) != len(loose.per_constraint):
            raise ValueError("strict and loose results of one prompt must cover the same constraints")
        n_prompts += 1
        n_instructions += len(strict.per_constraint)
        for i, result in enumerate((strict, loose)):
            prompt_ok[i] += result.all_pass
            instruction_ok[i] += sum(result.per_constraint)
    if n_prompts == 0 or n_instructions == 0:
        raise ValueError("ifeval_accuracy needs at least one scored prompt with at least one instruction")
    return IFEvalAccuracy(
        prompt_strict=prompt_ok[0] / n_prompts,
        instruction_strict=instruction_ok[0] / n_instructions,
        prompt_loose=prompt_ok[1] / n_prompts,
        instruction_loose=instruction_ok[1] / n_instructions,
        n_prompts=n_prompts,
        n_instructions=n_instructions,
    )


# ------------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class IFEvalInput:
    """One validated line of IFEval's input: ``kwargs[i]`` (nulls dropped) goes with ``instruction_id_list[i]``."""

    key: Any
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]
    constraints: list[Constraint] = field(repr=False, compare=False)
    path: str = ""
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _parse_input(path: str | Path, lineno: int, obj: dict[str, Any]) -> IFEvalInput:
    where = f"{path}:{lineno}"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: field 'prompt': expected a non-empty string, got {prompt!r}")
    ids = obj.get("instruction_id_list")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: field 'instruction_id_list': expected a non-empty list of strings, got {ids!r}")
    raw_kwargs = obj.get("kwargs")
    if not isinstance(raw_kwargs, list):
        raise DataError(f"{where}: field 'kwargs': expected a list of objects, got {raw_kwargs!r}")
    if len(raw_kwargs) != len(ids):
        raise DataError(
            f"{where}: field 'kwargs': expected {len(ids)} entries (one per instruction id), got {len(raw_kwargs)}"
        )
    constraints: list[Constraint] = []
    for i, (cid, kwargs) in enumerate(zip(ids, raw_kwargs, strict=True)):
        try:
            ctype = get_constraint_type(cid)
        except ConstraintError as err:
            raise DataError(f"{where}: field 'instruction_id_list[{i}]': unknown constraint id {cid!r}") from err
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise DataError(f"{where}: field 'kwargs[{i}]' ({cid}): expected an object, got {kwargs!r}")
        try:
            constraints.append(ctype.bind(kwargs))
        except ConstraintError as err:
            name = f"kwargs[{i}]" + (f".{err.field}" if err.field else "")
            raise DataError(f"{where}: field '{name}' ({cid}): {err.problem}") from err
    return IFEvalInput(
        key=obj.get("key"),
        prompt=prompt,
        instruction_id_list=list(ids),
        kwargs=[c.kwargs for c in constraints],
        constraints=constraints,
        path=str(path),
        line=lineno,
    )


def read_ifeval_inputs(path: str | Path) -> list[IFEvalInput]:
    """Read and validate IFEval's input JSONL (blank lines skipped); :class:`DataError` names ``path:line``.

    A ``key`` given twice is an error naming both lines (keys name prompts in results and pair files)."""
    inputs = [_parse_input(path, lineno, obj) for lineno, obj in iter_jsonl(path)]
    first: dict[str, IFEvalInput] = {}
    for inp in inputs:
        if inp.key is not None:
            seen = first.setdefault(json.dumps(inp.key, sort_keys=True), inp)
            if seen is not inp:
                raise DataError(f"{inp.where}: field 'key': duplicate key {inp.key!r} (first at {seen.where})")
    return inputs


def read_responses(path: str | Path) -> dict[str, str]:
    """Read ``{"prompt", "response"}`` lines into prompt -> response.

    A prompt given twice with different responses is an error (which one to score would be a guess).
    """
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        for name in ("prompt", "response"):
            if not isinstance(obj.get(name), str):
                raise DataError(f"{path}:{lineno}: field {name!r}: expected a string, got {obj.get(name)!r}")
        prompt, response = obj["prompt"], obj["response"]
        if prompt in out and out[prompt] != response:
            raise DataError(
                f"{path}:{lineno}: field 'prompt': same prompt as line {first_line[prompt]} with a different response"
            )
        out[prompt] = response
        first_line.setdefault(prompt, lineno)
    return out


def evaluate(
    inputs: Sequence[IFEvalInput], responses: Mapping[str, str], *, responses_path: str | Path = "responses"
) -> list[PromptResult]:
    """Score each input's response (matched by prompt), strict and loose."""
    results: list[PromptResult] = []
    for inp in inputs:
        if inp.prompt not in responses:
            raise DataError(f"{responses_path}: no response for the prompt of {inp.where} (key {inp.key!r})")
        response = responses[inp.prompt]
        strict, loose = score_strict_loose(response, inp.constraints)
        results.append(PromptResult(inp.prompt, response, inp.instruction_id_list, strict, loose, key=inp.key))
    return results


def evaluate_files(input_path: str | Path, responses_path: str | Path) -> list[PromptResult]:
    """:func:`read_ifeval_inputs` + :func:`read_responses` + :func:`evaluate`."""
    inputs = read_ifeval_inputs(input_path)
    return evaluate(inputs, read_responses(responses_path), responses_path=responses_path)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print IFEval's four accuracies for a responses file against an input file."""
    parser = argparse.ArgumentParser(
        prog="lm-suite if score",
        description="IFEval strict/loose prompt- and instruction-level accuracy (Zhou et al. 2023).",
    )
    parser.add_argument("--input", required=True, help="IFEval input JSONL (key, prompt, instruction_id_list, kwargs)")
    parser.add_argument("--responses", required=True, help='JSONL of {"prompt", "response"}, matched by prompt')
    args = parser.parse_args(argv)
    try:
        acc = ifeval_accuracy(evaluate_files(args.input, args.responses))
    except (DataError, MissingExtraError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"prompt-level strict accuracy: {acc.prompt_strict:.4f}")
    print(f"instruction-level strict accuracy: {acc.instruction_strict:.4f}")
    print(f"prompt-level loose accuracy: {acc.prompt_loose:.4f}")
    print(f"instruction-level loose accuracy: {acc.instruction_loose:.4f}")
    print(f"({acc.n_prompts} prompts, {acc.n_instructions} instructions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
