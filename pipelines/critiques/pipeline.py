"""Critic-RM stage 1: generate, filter and refine critiques of preference pairs (Yu et al. 2025, NAACL).

Yu et al. 2025, "Self-Generated Critiques Boost Reward Modeling for Language Models": an instruct LLM writes
candidate critiques of both responses of each preference pair, each ending in a discrete score; critiques that
conflict with the preference label are filtered out at the instance level, and the rest are refined in a
quality-aware step ("Summ" or "Rank"). The critiques then train one model with an LM head and a reward head.

Per pair (input: JSONL rows with ``prompt``, ``chosen``, ``rejected`` as strings or chat messages; other fields
are carried through):

1. **Candidates.** ``n`` critiques of each response (:data:`~.templates.CRITIQUE_TEMPLATE`); each chunk of pairs is
   one batched generator call (all ``2 x pairs`` critique prompts with ``n=n``). Each critique is stripped of
   surrounding whitespace and parsed with :func:`~.parse.parse_score`; an unparseable critique is kept aside in
   ``critique_meta[side]["unparsed"]``, counted, and not used.
2. **Instance-level consistency filter** (our exact rule for the paper's "drop critiques that conflict with the
   label"). With ``C`` the parsed chosen-critique scores and ``R`` the parsed rejected-critique scores:

   - if ``C`` or ``R`` is empty, the pair is dropped (``no_parsed_critique``);
   - if ``mean(C) <= mean(R)``, the pair is dropped (``inconsistent``): on average the critiques disagree with the
     label;
   - otherwise a chosen critique is kept iff its score is ``> mean(R)``, a rejected critique iff its score is
     ``< mean(C)`` (each agrees with the label against the other side's average). Both sides keep at least one
     critique, since ``max(C) >= mean(C) > mean(R) >= min(R)``. The parsed critiques removed here are counted.

3. **Quality-aware refinement** (``refine``), one batched call per chunk with ``n=1``:

   - ``none``: every kept critique, in generation order;
   - ``summ``: the LLM merges a response's kept critiques into one (:data:`~.templates.SUMMARY_TEMPLATE`, also when
     only one was kept, so every output critique has the same style); if the summary has no parseable score, or
     its score breaks the filter's rule above (a chosen summary not above the rejected mean, a rejected one not
     below the chosen mean), the *best* kept critique is used instead and counted (``summary_fallback``, with
     ``summary_fallback_reason`` ``no_score`` or ``inconsistent``);
   - ``rank``: an LLM judge rates every kept critique (:data:`~.templates.JUDGE_TEMPLATE`, read with label
     ``Rating``); the ``top_k`` best are kept, best first: higher rating first, unparseable ratings last (and
     counted), ties broken by the critique's score, then by generation order.

   "Best" by score is direction-aware (our choice): the critique that agrees most with the label, i.e. the highest
   score on the chosen side and the lowest on the rejected side.

Output (one JSONL line per kept pair; ``chosen_critique`` / ``rejected_critique`` are read by the Critic-RM
datamodule as a string or a list of strings)::

    {...every input field...,
     "chosen_critique": str (summ) | [str, ...] (none: all kept; rank: top k, best first),
     "rejected_critique": same shape,
     "chosen_critique_scores": float (summ) | [float, ...] aligned with the list,
     "rejected_critique_scores": same shape,
     "critique_meta": {"refine": "none|summ|rank", "n": N, ("top_k": k, rank only)
                       "chosen": {"candidates": N, "parsed": p, "kept": m, "mean_score": float,
                                  "unparsed": [str, ...],
                                  ("summary_fallback": bool, "summary_fallback_reason": None | "no_score" |
                                   "inconsistent", summ only) ("ratings": [float|None, ...], "unrated": u,
                                  rank only: ratings aligned with the top-k list, unrated over all judged)},
                       "rejected": {...same...}}}

Dropped pairs are written to ``<out>.dropped.jsonl`` (:func:`dropped_path`) as ``{"where", "critique_dropped":
reason, "pair": the input row, "candidates": {side: [critique, ...]}, "scores": {side: [score or None, ...]}}``, so
every generated critique, parseable or not, is on record. Input field ``error`` is reserved (it marks failure
records); input fields named like the output fields are overwritten. Pairs whose generation fails after ``retries``
further attempts, at any stage, go to
``<out>.failures.jsonl`` as ``{"where", "stage", "error", "attempts", "pair": the input row}``.

Runs are resumable and atomic through :func:`pipelines.resumable.run_resumable` (chunks of
``chunk_size`` pairs written as parts under ``<out>.parts/``; a rerun skips finished parts; settings and inputs are
fingerprinted). Dropped pairs are recorded in the parts only as count records, so the statistics written
atomically to ``<out>.stats.json`` (:func:`stats_path`) cover the whole run, resumed or not. Critique counts cover
the pairs that got through generation; a failed pair counts only as ``generation_failed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from core.chat import Messages, messages_of, text_of
from core.errors import DataError
from core.generation import GenerationFailure, Generator, generate_with_retries
from core.io import atomic_write_text, jsonl_text
from core.records import iter_jsonl
from pipelines.critiques.parse import parse_score
from pipelines.critiques.templates import Templates, format_critiques
from pipelines.resumable import RunReport, failures_path, run_resumable

DEFAULT_CHUNK_SIZE = 64  # pairs per atomically written part

__all__ = [
    "DROP_REASONS",
    "OUTPUT_FIELDS",
    "REFINE_METHODS",
    "SIDES",
    "CritiqueConfig",
    "CritiquePair",
    "CritiqueReport",
    "FilterResult",
    "StatsTally",
    "conversation_text",
    "critique_pairs",
    "dropped_path",
    "failures_path",
    "filter_critiques",
    "pairs_fingerprint",
    "read_pairs",
    "stats_path",
    "write_critiques",
]

SIDES = ("chosen", "rejected")
REFINE_METHODS = ("none", "summ", "rank")
DROP_REASONS = ("inconsistent", "no_parsed_critique", "generation_failed")
OUTPUT_FIELDS = (
    "chosen_critique",
    "rejected_critique",
    "chosen_critique_scores",
    "rejected_critique_scores",
    "critique_meta",
)
_ROLES = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}


# ------------------------------------------------------------------------------------------------ input


def conversation_text(messages: Messages) -> str:
    """The text a template shows for a field: one message's content, or ``Role: content`` blocks for several."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass(frozen=True)
class CritiquePair:
    """One validated input pair: its row (carried to the output), location, and the texts the templates show."""

    index: int
    where: str
    row: dict[str, Any]
    prompt: str
    chosen: str
    rejected: str

    def response(self, side: str) -> str:
        return self.chosen if side == "chosen" else self.rejected


def read_pairs(path: str | Path) -> list[CritiquePair]:
    """Validated pairs of a JSONL file; DataError naming ``path:line`` for a missing, empty or malformed field."""
    out: list[CritiquePair] = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        texts: dict[str, str] = {}
        for name, role in _ROLES.items():
            if row.get(name) is None:
                raise DataError(f"{where}: missing field {name!r} (expected a string or a list of chat messages)")
            messages = messages_of(row[name], role, name, where)
            if not text_of(messages).strip():
                raise DataError(f"{where}: field {name!r} is empty")
            texts[name] = conversation_text(messages)
        if "error" in row:
            raise DataError(f"{where}: field 'error' is reserved (it marks failure records); rename it")
        out.append(CritiquePair(len(out), where, row, texts["prompt"], texts["chosen"], texts["rejected"]))
    if not out:
        raise DataError(f"{path}: no pairs")
    return out


def pairs_fingerprint(pairs: Sequence[CritiquePair]) -> str:
    """A hash of the input rows, so that a resumed run refuses other inputs."""
    return hashlib.sha256(json.dumps([p.row for p in pairs], ensure_ascii=False).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class CritiqueConfig:
    """How critiques are generated and refined (module docstring); ValueError for an invalid value."""

    n: int = 4
    refine: str = "summ"
    top_k: int = 1
    max_new_tokens: int = 256
    retries: int = 2
    templates: Templates = field(default_factory=Templates)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n (critiques per response) must be >= 1, got {self.n}")
        if self.refine not in REFINE_METHODS:
            raise ValueError(f"unknown refine method {self.refine!r}: expected one of {', '.join(REFINE_METHODS)}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def meta(self) -> dict[str, Any]:
        """The settings a resumed run must share (``retries`` does not change results, so it is left out)."""
        return dict(n=self.n, refine=self.refine, top_k=self.top_k, max_new_tokens=self.max_new_tokens,
                    templates=self.templates.fingerprint())


# ------------------------------------------------------------------------------------------------ filtering


@dataclass(frozen=True)
class FilterResult:
    """Parsed scores of each side's candidates, the indices kept by the consistency filter, and why a pair fell."""

    chosen_scores: list[float | None]
    rejected_scores: list[float | None]
    chosen_kept: list[int]
    rejected_kept: list[int]
    chosen_mean: float | None
    rejected_mean: float | None
    dropped: str | None  # None (kept), "no_parsed_critique" or "inconsistent"

    def scores(self, side: str) -> list[float | None]:
        return self.chosen_scores if side == "chosen" else self.rejected_scores

    def kept(self, side: str) -> list[int]:
        return self.chosen_kept if side == "chosen" else self.rejected_kept

    def mean(self, side: str) -> float | None:
        return self.chosen_mean if side == "chosen" else self.rejected_mean


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def filter_critiques(chosen: Sequence[str], rejected: Sequence[str]) -> FilterResult:
    """Apply the instance-level consistency rule of the module docstring to two lists of candidate critiques."""
    c_scores = [parse_score(t) for t in chosen]
    r_scores = [parse_score(t) for t in rejected]
    c_mean = _mean([s for s in c_scores if s is not None])
    r_mean = _mean([s for s in r_scores if s is not None])
    if c_mean is None or r_mean is None:
        return FilterResult(c_scores, r_scores, [], [], c_mean, r_mean, "no_parsed_critique")
    if c_mean <= r_mean:
        return FilterResult(c_scores, r_scores, [], [], c_mean, r_mean, "inconsistent")
    result = FilterResult(c_scores, r_scores, [], [], c_mean, r_mean, None)
    for side in SIDES:
        scores = result.scores(side)
        result.kept(side).extend(i for i, s in enumerate(scores) if s is not None and _agrees(side, s, result))
    return result


def _agrees(side: str, score: float, result: FilterResult) -> bool:
    """The filter's per-critique rule: a chosen score above the rejected mean, a rejected one below the chosen mean."""
    if side == "chosen":
        return score > (result.rejected_mean if result.rejected_mean is not None else float("-inf"))
    return score < (result.chosen_mean if result.chosen_mean is not None else float("inf"))


def _by_label(side: str, scores: Sequence[float | None], indices: Sequence[int]) -> list[int]:
    """``indices`` (of parsed scores) best first in the label's direction: chosen high first, rejected low first."""
    sign = -1.0 if side == "chosen" else 1.0
    return sorted(indices, key=lambda i: (sign * float(scores[i] or 0.0), i))


# ------------------------------------------------------------------------------------------------ one chunk


@dataclass
class _Pending:
    """A pair that passed the filter, while its refinement is gathered."""

    pair: CritiquePair
    candidates: dict[str, list[str]]
    result: FilterResult
    extra: dict[str, dict[str, Any]]
    critique: dict[str, Any]
    scores: dict[str, Any]


def _failure(pair: CritiquePair, stage: str, failure: GenerationFailure) -> dict[str, Any]:
    return {"where": pair.where, "stage": stage, "error": failure.error, "attempts": failure.attempts, "pair": pair.row}


def _meta_head(config: CritiqueConfig) -> dict[str, Any]:
    head: dict[str, Any] = {"refine": config.refine, "n": config.n}
    if config.refine == "rank":
        head["top_k"] = config.top_k
    return head


def _side_meta(candidates: Sequence[str], result: FilterResult, side: str, with_texts: bool) -> dict[str, Any]:
    scores = result.scores(side)
    meta: dict[str, Any] = {
        "candidates": len(candidates),
        "parsed": sum(s is not None for s in scores),
        "kept": len(result.kept(side)),
        "mean_score": result.mean(side),
    }
    if with_texts:
        meta["unparsed"] = [t for t, s in zip(candidates, scores, strict=True) if s is None]
    return meta


def _summarise(pending: list[_Pending], generator: Generator, config: CritiqueConfig) -> dict[int, dict[str, Any]]:
    """Fill in summaries (or fallbacks); returns failure records by pair index for pairs whose call failed."""
    jobs = [(p, side) for p in pending for side in SIDES]
    prompts = [
        config.templates.summary.format(
            prompt=p.pair.prompt,
            response=p.pair.response(side),
            critiques=format_critiques([p.candidates[side][i] for i in p.result.kept(side)]),
        )
        for p, side in jobs
    ]
    results = generate_with_retries(generator, prompts, 1, config.max_new_tokens, retries=config.retries)
    failed: dict[int, dict[str, Any]] = {}
    for (p, side), answer in zip(jobs, results, strict=True):
        if isinstance(answer, GenerationFailure):
            failed.setdefault(p.pair.index, _failure(p.pair, "summary", answer))
            continue
        summary = answer[0].strip()
        score = parse_score(summary)
        reason = None if score is not None else "no_score"
        if score is not None and not _agrees(side, score, p.result):
            reason = "inconsistent"  # the summary's score contradicts the label: it would undo the filter
        if reason is not None:
            best = _by_label(side, p.result.scores(side), p.result.kept(side))[0]
            summary, score = p.candidates[side][best], p.result.scores(side)[best]
        p.critique[side], p.scores[side] = summary, score
        p.extra[side]["summary_fallback"] = reason is not None
        p.extra[side]["summary_fallback_reason"] = reason
    return failed


def _rank_key(side: str, ratings: dict[int, float | None], scores: Sequence[float | None], i: int) -> tuple:
    """Judge order: rated before unrated, higher rating first, then the label-direction score, then order."""
    rating = ratings[i]
    sign = -1.0 if side == "chosen" else 1.0
    return (rating is None, -(rating or 0.0), sign * float(scores[i] or 0.0), i)


def _rank(pending: list[_Pending], generator: Generator, config: CritiqueConfig) -> dict[int, dict[str, Any]]:
    """Fill in the judge's top-k critiques; returns failure records by pair index for pairs whose call failed."""
    jobs = [(p, side, i) for p in pending for side in SIDES for i in p.result.kept(side)]
    prompts = [
        config.templates.judge.format(prompt=p.pair.prompt, response=p.pair.response(side),
                                      critique=p.candidates[side][i])
        for p, side, i in jobs
    ]
    results = generate_with_retries(generator, prompts, 1, config.max_new_tokens, retries=config.retries)
    ratings: dict[tuple[int, str], dict[int, float | None]] = {}
    failed: dict[int, dict[str, Any]] = {}
    for (p, side, i), answer in zip(jobs, results, strict=True):
        if isinstance(answer, GenerationFailure):
            failed.setdefault(p.pair.index, _failure(p.pair, "judge", answer))
            continue
        ratings.setdefault((p.pair.index, side), {})[i] = parse_score(answer[0], label="Rating")
    for p in pending:
        if p.pair.index in failed:
            continue
        for side in SIDES:
            rated = ratings[(p.pair.index, side)]
            scores = p.result.scores(side)
            top = sorted(rated, key=partial(_rank_key, side, rated, scores))[: config.top_k]
            p.critique[side] = [p.candidates[side][i] for i in top]
            p.scores[side] = [scores[i] for i in top]
            p.extra[side]["ratings"] = [rated[i] for i in top]
            p.extra[side]["unrated"] = sum(r is None for r in rated.values())
    return failed


def critique_pairs(pairs: Sequence[CritiquePair], generator: Generator, config: CritiqueConfig) -> list[dict[str, Any]]:
    """Critique, filter and refine one chunk of pairs; returns output, count and failure records in input order.

    Output records are those of the module docstring; a dropped pair gives a count record
    ``{"critique_dropped": reason, "where", "critique_meta"}`` (left out of the output by :class:`StatsTally`);
    a failed pair gives a failure record (with ``error``).
    """
    prompts = [
        config.templates.critique.format(prompt=p.prompt, response=p.response(side)) for p in pairs for side in SIDES
    ]
    results = generate_with_retries(generator, prompts, config.n, config.max_new_tokens, retries=config.retries)
    records: dict[int, dict[str, Any]] = {}
    pending: list[_Pending] = []
    for k, pair in enumerate(pairs):
        answers = results[2 * k : 2 * k + 2]
        failure = next((a for a in answers if isinstance(a, GenerationFailure)), None)
        if failure is not None:
            records[pair.index] = _failure(pair, "critique", failure)
            continue
        candidates = {side: [t.strip() for t in a] for side, a in zip(SIDES, answers, strict=True)}
        result = filter_critiques(candidates["chosen"], candidates["rejected"])
        if result.dropped is not None:
            meta = {**_meta_head(config), **{side: _side_meta(candidates[side], result, side, False) for side in SIDES}}
            records[pair.index] = {"critique_dropped": result.dropped, "where": pair.where, "critique_meta": meta,
                                   "pair": pair.row, "candidates": candidates,
                                   "scores": {side: result.scores(side) for side in SIDES}}
            continue
        extra = {side: _side_meta(candidates[side], result, side, True) for side in SIDES}
        item = _Pending(pair, candidates, result, extra, {}, {})
        for side in SIDES:  # refine == "none": every kept critique, in order
            item.critique[side] = [candidates[side][i] for i in result.kept(side)]
            item.scores[side] = [result.scores(side)[i] for i in result.kept(side)]
        pending.append(item)
    if config.refine == "summ":
        records.update(_summarise(pending, generator, config))
    elif config.refine == "rank":
        records.update(_rank(pending, generator, config))
    for p in pending:
        if p.pair.index in records:  # failed in refinement
            continue
        meta = {**_meta_head(config), **p.extra}
        records[p.pair.index] = {
            **p.pair.row,
            "chosen_critique": p.critique["chosen"],
            "rejected_critique": p.critique["rejected"],
            "chosen_critique_scores": p.scores["chosen"],
            "rejected_critique_scores": p.scores["rejected"],
            "critique_meta": meta,
        }
    return [records[p.index] for p in pairs]


# ------------------------------------------------------------------------------------------------ whole runs


def stats_path(out: str | Path) -> Path:
    """Where a run's statistics are written: ``<out>.stats.json``."""
    out = Path(out)
    return out.with_name(out.name + ".stats.json")


def dropped_path(out: str | Path) -> Path:
    """Where the pairs dropped by the filter are recorded with their candidate critiques: ``<out>.dropped.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + ".dropped.jsonl")


class StatsTally:
    """Counts every record of a run while it is assembled (``keep`` of ``run_resumable``); drops count records."""

    def __init__(self) -> None:
        self.pairs_kept = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.generated = self.parsed = self.filtered = self.kept = 0
        self.fallbacks = self.inconsistent_summaries = self.unrated = 0
        self.dropped_records: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> bool:
        if "error" in record:
            self.dropped["generation_failed"] += 1
            return True
        meta = record["critique_meta"]
        sides = [meta[side] for side in SIDES]
        self.generated += sum(s["candidates"] for s in sides)
        self.parsed += sum(s["parsed"] for s in sides)
        if "chosen_critique" not in record:  # a dropped pair: counted, and kept for <out>.dropped.jsonl
            self.dropped[record["critique_dropped"]] += 1
            self.dropped_records.append({k: record[k] for k in ("where", "critique_dropped", "pair", "candidates",
                                                                  "scores")})
            return False
        self.pairs_kept += 1
        self.kept += sum(s["kept"] for s in sides)
        self.filtered += sum(s["parsed"] - s["kept"] for s in sides)
        self.fallbacks += sum(bool(s.get("summary_fallback")) for s in sides)
        self.inconsistent_summaries += sum(s.get("summary_fallback_reason") == "inconsistent" for s in sides)
        self.unrated += sum(s.get("unrated", 0) for s in sides)
        return True

    def summary(self, pairs_in: int, config: CritiqueConfig) -> dict[str, Any]:
        """The statistics of ``<out>.stats.json``."""
        return {
            "pairs_in": pairs_in,
            "pairs_kept": self.pairs_kept,
            "pairs_dropped": dict(self.dropped),
            "critiques_generated": self.generated,
            "critiques_parsed": self.parsed,
            "critiques_unparseable": self.generated - self.parsed,
            "critiques_dropped_by_filter": self.filtered,
            "critiques_kept": self.kept,
            "summaries_fallback": self.fallbacks,
            "summaries_inconsistent": self.inconsistent_summaries,
            "judge_ratings_unparseable": self.unrated,
            "refine": config.refine,
            "n": config.n,
        }


@dataclass(frozen=True)
class CritiqueReport:
    """A finished run: the resumable run's report, its statistics and where they were written."""

    run: RunReport
    stats: dict[str, Any]
    stats_path: Path


def write_critiques(
    pairs: Sequence[CritiquePair],
    out: str | Path,
    generator: Generator,
    config: CritiqueConfig | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    meta: dict[str, Any] | None = None,
) -> CritiqueReport:
    """Critique ``pairs`` into ``out`` resumably, then write ``<out>.stats.json`` atomically (module docstring).

    ``meta`` adds settings (the backend, model, sampling) that a resumed run must share.
    """
    config = config or CritiqueConfig()
    settings = {"method": "critic_rm", **config.meta(), **(meta or {})}
    tally = StatsTally()
    report = run_resumable(
        pairs, out, partial(critique_pairs, generator=generator, config=config), chunk_size=chunk_size,
        meta=settings, fingerprint=pairs_fingerprint(pairs), keep=tally,
    )
    stats = tally.summary(len(pairs), config)
    dropped = dropped_path(out)
    if tally.dropped_records:
        atomic_write_text(dropped, jsonl_text(tally.dropped_records))
    elif dropped.is_file():
        dropped.unlink()
    path = stats_path(out)
    atomic_write_text(path, json.dumps(stats, indent=2) + "\n")
    return CritiqueReport(report, stats, path)
