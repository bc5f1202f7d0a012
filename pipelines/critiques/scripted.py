"""A deterministic LLM double for the Critic-RM critique pipeline (Yu et al. 2025, NAACL), for tests and offline data.

Yu et al. 2025, "Self-Generated Critiques Boost Reward Modeling for Language Models", generate critiques with an
instruct LLM, which cannot be downloaded here. :class:`ScriptedCritic` stands in for it: it implements the
:class:`~core.generation.Generator` protocol, recognises which template a request was
built from (critique, summary or judge; :func:`~.templates.template_pattern` recovers the fields), and answers
like a careful critic of the planted pairs of :mod:`datamodules.synthetic`:

- **critique**: reads the prompt's constraint from its wording ("in lowercase letters only", "in capital
  letters", "do not use any commas", ``end your answer with the phrase "..."``), checks the response, and writes
  one sentence that names the feature (:data:`VERDICTS`) plus ``Score: N/10``: 7 to 10 when the constraint is
  followed, 1 to 4 when it is broken. Noise: with probability ``flip_rate`` the verdict is wrong and confidently so
  (1/10 for a followed constraint, 10/10 for a broken one), which guarantees the consistency filter removes it on
  the planted pairs (a chosen critique must beat the rejected mean, which is at least 1; a rejected one must stay
  below the chosen mean, at most 10); with probability ``unparseable_rate`` the score line is left out. A prompt
  without a recognised constraint gets a generic sentence scored 4 to 7.
- **summary**: the first line of the first critique plus the rounded mean of the critiques' scores.
- **judge**: ``Rating: 9/10`` for a critique that names the feature with the right verdict, 2 for the wrong
  verdict, 5 otherwise.

``unparseable_rate`` applies to every answer (critiques, summaries, judge ratings), so every fallback path runs.
Each answer is drawn from a generator seeded by ``seed``, the request text and the sample index, so reruns (a
resumed run) give the same text. ``max_new_tokens`` is not enforced: answers are under 30 tokens of the tiny
tokenizer. A request that matches none of the templates raises ValueError (a generation failure).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from pipelines.critiques.parse import parse_score
from pipelines.critiques.templates import Templates, split_critiques, template_pattern

__all__ = ["GENERIC_VERDICT", "VERDICTS", "ScriptedCritic", "detect_constraint", "follows_constraint"]

#: constraint kind -> (sentence when followed, sentence when broken)
VERDICTS: dict[str, tuple[str, str]] = {
    "lowercase": (
        "The response is written in lowercase letters only, as the prompt asks.",
        "The response uses capital letters although the prompt asks for lowercase.",
    ),
    "uppercase": (
        "The response is written in capital letters, as the prompt asks.",
        "The response uses lowercase letters although the prompt asks for capitals.",
    ),
    "no_comma": (
        "The response uses no commas, as the prompt asks.",
        "The response uses commas although the prompt forbids them.",
    ),
    "end_phrase": (
        "The response ends with the phrase the prompt asks for.",
        "The response does not end with the phrase the prompt asks for.",
    ),
}
GENERIC_VERDICT = "The response answers the prompt."

_END_PHRASE = re.compile(r'end your answer with the phrase "(.*)"', re.IGNORECASE | re.DOTALL)


def detect_constraint(prompt: str) -> tuple[str, str | None] | None:
    """``(kind, end phrase or None)`` of a synthetic prompt's constraint, from its wording; None if none is found."""
    low = prompt.lower()
    if "in lowercase letters only" in low:
        return "lowercase", None
    if "in capital letters" in low:
        return "uppercase", None
    if "do not use any commas" in low:
        return "no_comma", None
    match = _END_PHRASE.search(prompt)
    if match:
        return "end_phrase", match.group(1)
    return None


def follows_constraint(response: str, kind: str, phrase: str | None = None) -> bool:
    """Whether ``response`` follows a constraint of :func:`detect_constraint`."""
    if kind == "lowercase":
        return response == response.lower()
    if kind == "uppercase":
        return response == response.upper()
    if kind == "no_comma":
        return "," not in response
    if kind == "end_phrase":
        return response.rstrip().endswith((phrase or "").strip())
    raise ValueError(f"unknown constraint kind {kind!r}: expected one of {', '.join(VERDICTS)}")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class ScriptedCritic:
    """The seeded critic double of the module docstring (a :class:`Generator`)."""

    def __init__(
        self,
        seed: int = 0,
        flip_rate: float = 0.0,
        unparseable_rate: float = 0.0,
        templates: Templates | None = None,
    ) -> None:
        for name, rate in (("flip_rate", flip_rate), ("unparseable_rate", unparseable_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        self.seed = seed
        self.flip_rate = flip_rate
        self.unparseable_rate = unparseable_rate
        templates = templates or Templates()
        # summary and judge first: their wording is the more specific
        self._handlers: list[tuple[str, re.Pattern[str], Callable[[dict[str, str], random.Random], str]]] = [
            ("summary", template_pattern(templates.summary), self._summary),
            ("judge", template_pattern(templates.judge), self._judge),
            ("critique", template_pattern(templates.critique), self._critique),
        ]

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        prefixes: list[str] | None = None,
        stop: list[str] | None = None,
    ) -> list[list[str]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return [[self.answer(prompt, j) for j in range(n)] for prompt in prompts]

    def answer(self, request: str, sample: int = 0) -> str:
        """Sample ``sample`` of the answer to one rendered request."""
        for kind, pattern, handler in self._handlers:
            match = pattern.fullmatch(request)
            if match:
                rng = random.Random(f"{self.seed}:{kind}:{sample}:{request}")
                return handler(match.groupdict(), rng)
        raise ValueError("ScriptedCritic: the request matches none of its critique, summary or judge templates")

    def _score_line(self, rng: random.Random, label: str, value: int) -> str:
        return "" if rng.random() < self.unparseable_rate else f"\n{label}: {value}/10"

    def _critique(self, fields: dict[str, str], rng: random.Random) -> str:
        flip = rng.random() < self.flip_rate
        constraint = detect_constraint(fields["prompt"])
        if constraint is None:
            return GENERIC_VERDICT + self._score_line(rng, "Score", rng.randint(4, 7))
        ok = follows_constraint(fields["response"], *constraint)
        verdict = ok != flip
        sentence = VERDICTS[constraint[0]][0 if verdict else 1]
        if flip:
            score = 1 if ok else 10
        else:
            score = rng.randint(7, 10) if ok else rng.randint(1, 4)
        return sentence + self._score_line(rng, "Score", score)

    def _summary(self, fields: dict[str, str], rng: random.Random) -> str:
        critiques = split_critiques(fields["critiques"])
        first = _first_line(critiques[0]) if critiques else GENERIC_VERDICT
        scores = [s for s in (parse_score(c) for c in critiques) if s is not None]
        if not scores:
            return first
        return first + self._score_line(rng, "Score", int(sum(scores) / len(scores) + 0.5))

    def _judge(self, fields: dict[str, str], rng: random.Random) -> str:
        constraint = detect_constraint(fields["prompt"])
        rating, note = 5, "The critique does not name what the prompt asks for."
        if constraint is not None:
            ok = follows_constraint(fields["response"], *constraint)
            right, wrong = VERDICTS[constraint[0]] if ok else VERDICTS[constraint[0]][::-1]
            if right in fields["critique"]:
                rating, note = 9, "The critique names the constraint and judges it correctly."
            elif wrong in fields["critique"]:
                rating, note = 2, "The critique judges the constraint wrongly."
        return note + self._score_line(rng, "Rating", rating)
