"""Reading the discrete score at the end of a critique, or a judge's rating (Critic-RM, Yu et al. 2025, NAACL).

Yu et al. 2025, "Self-Generated Critiques Boost Reward Modeling for Language Models", have each critique end in a
discrete score; the score format and its parser are our choice. :func:`parse_score` reads a ``<label>: value``
statement, where ``<label>`` is ``Score`` (critiques, summaries) or ``Rating`` (judge ratings):

- case-insensitive, whole word (``Final score: 7`` counts, ``scored: 7`` does not); the separator is ``:`` or
  ``=``; markdown emphasis (``*``, ``_``, backticks) may surround the label, the separator and the numbers:
  ``**Score:** 8/10``, ``Score: **8**/10``;
- the value is an integer or decimal, optionally over a denominator: ``7``, ``7/10``, ``7.5 / 10``,
  ``8 out of 10``;
- **the last statement wins** (a model that restates or corrects its score ends with the final one); if that last
  statement is invalid the text has no score, even when an earlier one was valid;
- a denominator other than ``scale`` is rescaled to it (``Score: 4/5`` on scale 10 reads 8.0); a zero denominator,
  a negative value or a value above ``scale`` (after rescaling: ``Score: 12/10``, ``Score: 6/5``) gives None.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_SCALE", "parse_rating", "parse_score"]

DEFAULT_SCALE = 10

_MD = r"[*_`\s]*"  # markdown emphasis and spaces allowed between the pieces
_NUMBER = r"(-?\d+(?:\.\d+)?)"


def _pattern(label: str) -> re.Pattern[str]:
    return re.compile(
        rf"\b{re.escape(label)}\b{_MD}[:=]{_MD}{_NUMBER}(?:{_MD}(?:/|\bout\s+of\b){_MD}{_NUMBER})?",
        re.IGNORECASE,
    )


_PATTERNS: dict[str, re.Pattern[str]] = {}


def parse_score(text: str, scale: float = DEFAULT_SCALE, label: str = "Score") -> float | None:
    """The last ``<label>: value[/denominator]`` of ``text`` on ``[0, scale]``, or None (module docstring)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    pattern = _PATTERNS.get(label)
    if pattern is None:
        pattern = _PATTERNS.setdefault(label, _pattern(label))
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    value_text, denominator_text = matches[-1].groups()
    value = float(value_text)
    if denominator_text is not None:
        denominator = float(denominator_text)
        if denominator == 0:
            return None
        if denominator != scale:
            value = value * scale / denominator
    if not 0 <= value <= scale:
        return None
    return value


def parse_rating(text: str, scale: float = DEFAULT_SCALE) -> float | None:
    """A judge's ``Rating: N/10`` (:func:`parse_score` with ``label="Rating"``)."""
    return parse_score(text, scale, label="Rating")
