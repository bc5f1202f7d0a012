"""A scripted writer of short responses that follows each verifiable constraint with a chosen probability.

It stands in, offline, for the instruct model a real run would start from (Kim et al. 2025 start from pretrained
instruct LLMs, which cannot be downloaded here). The end-to-end job (:mod:`.job`) warms the tiny policy up on its
drafts, so the policy writes on-topic text and follows each instruction only sometimes; rejection sampling, MCTS and
DPO then have something to improve. Because every draft records which constraints it meant to follow, the writer
also serves the tests as an oracle: with ``p_follow=1`` every draft passes the strict verifiers, and every
constraint it skips fails.

A draft: two or three stock sentences (always with a comma, capitalised, so ``no_comma``,
``english_lowercase`` and ``english_capital`` fail unless followed), then, for each constraint drawn to be
followed: a ``<<title>>`` line (the topic), a postscript with the requested marker, the end phrase, commas
removed, the case
changed, the whole wrapped in double quotes (IFEval's verifiers strip quotes before checking the end phrase).
Only the types in :data:`DRAFTABLE` are written; the job's default constraint set is drawn from them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DRAFTABLE", "Draft", "draft_response", "draft_for_record"]

DRAFTABLE = (
    "change_case:english_capital",
    "change_case:english_lowercase",
    "detectable_content:postscript",
    "detectable_format:title",
    "punctuation:no_comma",
    "startend:end_checker",
    "startend:quotation",
)

_OPENERS = (
    "This is worth a closer look, and there is a lot to say.",
    "Here is my take, kept short and simple.",
    "When people talk about it, they often start with the basics.",
    "It touches many lives, in small ways and large ones.",
)
_MIDDLES = (
    "It asks for patience, care and a clear plan.",
    "Some find it hard at first, but most learn quickly.",
    "The details matter, yet the big picture matters more.",
    "Friends, family and neighbours all have a view on it.",
    "It is simple to start, and it rewards steady practice.",
)
_CLOSERS = (
    "In the end, it is about what we value most.",
    "Take it one step at a time, and enjoy the journey.",
    "That, in short, is why it deserves our attention.",
)
_PS = ("Thanks for reading.", "Let me know your thoughts.", "I hope this helps.")


class Draft(str):
    """A drafted response (a ``str``) that also knows which constraint ids it set out to follow."""

    followed: frozenset[str]

    def __new__(cls, text: str, followed: frozenset[str]) -> Draft:
        obj = super().__new__(cls, text)
        obj.followed = followed
        return obj


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def draft_response(
    topic: str,
    constraints: Sequence[tuple[str, Mapping[str, Any]]],
    rng: random.Random,
    p_follow: float = 0.5,
) -> Draft:
    """A draft about ``topic`` that follows each ``(id, kwargs)`` constraint with probability ``p_follow``.

    Raises ``ValueError`` for a constraint type the writer cannot write (not in :data:`DRAFTABLE`).
    """
    for cid, _ in constraints:
        if cid not in DRAFTABLE:
            raise ValueError(f"the draft writer cannot follow {cid!r}; it writes {', '.join(DRAFTABLE)}")
    follow = {cid: dict(kwargs) for cid, kwargs in constraints if rng.random() < p_follow}
    if "change_case:english_capital" in follow:  # the two cases conflict: capitals win, lowercase is not followed
        follow.pop("change_case:english_lowercase", None)
    sentences = [rng.choice(_OPENERS), rng.choice(_MIDDLES)]
    if rng.random() < 0.5:
        sentences.append(rng.choice(_CLOSERS))
    text = " ".join(sentences)
    if "detectable_format:title" in follow:
        text = f"<<{_capitalise(topic)}>>\n{text}"
    if "detectable_content:postscript" in follow:
        text += f"\n{follow['detectable_content:postscript']['postscript_marker']} {rng.choice(_PS)}"
    if "startend:end_checker" in follow:
        text += " " + follow["startend:end_checker"]["end_phrase"]
    if "punctuation:no_comma" in follow:
        text = text.replace(",", "")
    if "change_case:english_capital" in follow:
        text = text.upper()
    elif "change_case:english_lowercase" in follow:
        text = text.lower()
    if "startend:quotation" in follow:
        text = f'"{text}"'
    return Draft(text, frozenset(follow))


def draft_for_record(record: Mapping[str, Any], rng: random.Random, p_follow: float = 0.5) -> Draft:
    """:func:`draft_response` for a prompt record of ``synth`` (``topic``, ``instruction_id_list``, ``kwargs``)."""
    constraints = list(zip(record["instruction_id_list"], record["kwargs"], strict=True))
    return draft_response(record.get("topic") or "this topic", constraints, rng, p_follow)
