"""Prompt templates of the Critic-RM critique pipeline (Yu et al. 2025, NAACL).

Yu et al. 2025, "Self-Generated Critiques Boost Reward Modeling for Language Models", have an instruct LLM write
critiques that end in a discrete score, then refine the consistent ones by summarising them ("Summ") or by having
an LLM judge rank them ("Rank"). The wording below is ours (the paper's prompts are not at hand); each template is a
plain ``str.format`` string with named fields and can be replaced from the CLI by a template file:

- :data:`CRITIQUE_TEMPLATE` (``prompt``, ``response``): one critique ending in ``Score: N/10``;
- :data:`SUMMARY_TEMPLATE` (``prompt``, ``response``, ``critiques``): merge several critiques into one, again
  ending in ``Score: N/10``; ``critiques`` is :func:`format_critiques` of the list;
- :data:`JUDGE_TEMPLATE` (``prompt``, ``response``, ``critique``): rate a critique, ending in ``Rating: N/10``.

A template file uses the same syntax: exactly its template's fields, literal braces doubled (``{{``, ``}}``).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError
from core.records import read_text

__all__ = [
    "CRITIQUE_TEMPLATE",
    "FIELDS",
    "JUDGE_TEMPLATE",
    "SUMMARY_TEMPLATE",
    "Templates",
    "check_template",
    "format_critiques",
    "load_template",
    "split_critiques",
    "template_pattern",
]

CRITIQUE_TEMPLATE = """Please act as an impartial critic and review the response to the user's prompt below.

[Prompt]
{prompt}

[Response]
{response}

Write a short critique of the response: say what it does well and what it does badly, and check whether it \
follows every instruction in the prompt. End your critique with a final line of the form "Score: N/10", where N is \
an integer from 1 (very poor) to 10 (excellent)."""

SUMMARY_TEMPLATE = """Below are several critiques of the same response to the user's prompt.

[Prompt]
{prompt}

[Response]
{response}

[Critiques]
{critiques}

Merge these critiques into one short critique of the response: keep the points they agree on, leave out points \
that are wrong or repeated, and do not mention the individual critiques. End with a final line of the form \
"Score: N/10", where N is an integer from 1 (very poor) to 10 (excellent)."""

JUDGE_TEMPLATE = """Please act as an impartial judge of a critique. Below are a user's prompt, a response to it, \
and a critique of that response.

[Prompt]
{prompt}

[Response]
{response}

[Critique]
{critique}

Rate how helpful and correct the critique is: does it name the response's real strengths and weaknesses, and is \
its score fair? End with a final line of the form "Rating: N/10", where N is an integer from 1 (wrong or useless) \
to 10 (accurate and helpful)."""

#: The named fields each template must use (all of them, and no others).
FIELDS: dict[str, tuple[str, ...]] = {
    "critique": ("prompt", "response"),
    "summary": ("prompt", "response", "critiques"),
    "judge": ("prompt", "response", "critique"),
}


def _fields(template: str) -> list[str]:
    """The named fields of ``template`` in order; ValueError for malformed braces or positional fields."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"field {{{name}}} is not a plain name (positional and dotted fields are not supported)")
        if spec or conversion:
            raise ValueError(f"field {{{name}}} has a format spec or conversion; use a plain {{{name}}}")
        names.append(name)
    return names


def check_template(template: str, kind: str, source: str = "template") -> str:
    """Return ``template`` if it uses exactly the fields of ``kind`` (see :data:`FIELDS`); else ValueError."""
    if kind not in FIELDS:
        raise ValueError(f"unknown template kind {kind!r}: expected one of {', '.join(FIELDS)}")
    expected = FIELDS[kind]
    try:
        used = _fields(template)
    except ValueError as err:
        raise ValueError(f"{source}: {err} (write literal braces as {{{{ and }}}})") from None
    wanted = ", ".join("{" + f + "}" for f in expected)
    unknown = sorted(set(used) - set(expected))
    if unknown:
        raise ValueError(f"{source}: unknown field {{{unknown[0]}}}; a {kind} template uses {wanted}")
    missing = [f for f in expected if f not in used]
    if missing:
        raise ValueError(f"{source}: missing field {{{missing[0]}}}; a {kind} template uses {wanted}")
    return template


def load_template(path: str | Path, kind: str) -> str:
    """A template file's text, checked with :func:`check_template` (DataError for an unreadable file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cannot read the {kind} template (no such file)")
    return check_template(read_text(path), kind, str(path))  # DataError at path:line for a byte that is not UTF-8


@dataclass(frozen=True)
class Templates:
    """The three templates in use; checked on construction."""

    critique: str = CRITIQUE_TEMPLATE
    summary: str = SUMMARY_TEMPLATE
    judge: str = JUDGE_TEMPLATE

    def __post_init__(self) -> None:
        for kind in FIELDS:
            check_template(getattr(self, kind), kind, f"{kind} template")

    def fingerprint(self) -> str:
        """A short hash of the three texts, so that a resumed run refuses other templates."""
        text = "\0".join(getattr(self, kind) for kind in FIELDS)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def format_critiques(critiques: Sequence[str]) -> str:
    """The ``critiques`` field of the summary template: ``Critique 1:`` then the text, and so on."""
    return "\n\n".join(f"Critique {i}:\n{c.strip()}" for i, c in enumerate(critiques, start=1))


_CRITIQUE_HEAD = re.compile(r"(?m)^Critique \d+:\n")


def split_critiques(text: str) -> list[str]:
    """The inverse of :func:`format_critiques` (for critiques that hold no ``Critique N:`` line of their own)."""
    return [part.strip() for part in _CRITIQUE_HEAD.split(text)[1:]]


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex that matches a filled-in ``template`` whole and captures each field by name.

    Lets a scripted LLM double (and tests) recover the fields from a rendered prompt. A field used twice must hold
    the same text both times.
    """
    parts = []
    seen: set[str] = set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
    return re.compile("".join(parts), re.DOTALL)
