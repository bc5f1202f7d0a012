"""Critic-RM critique data: self-generated critiques of preference pairs (Yu et al. 2025, NAACL).

Yu et al. 2025, "Self-Generated Critiques Boost Reward Modeling for Language Models", stage 1: an instruct LLM
writes candidate critiques of both responses of each pair, each ending in a discrete score; critiques that conflict
with the preference label are filtered out per instance; the rest are refined by summarising them ("Summ") or by an
LLM judge keeping the top ones ("Rank"). Stage 2 (a model with an LM head and a reward head trained on these
critiques) reads the output's ``chosen_critique`` / ``rejected_critique`` fields.

- :mod:`.templates`: the critique, summary and judge prompt templates (replaceable by template files);
- :mod:`.parse`: :func:`~.parse.parse_score`, the score / rating parser;
- :mod:`.pipeline`: reading pairs, the consistency filter, refinement, resumable atomic runs and statistics;
- :mod:`.scripted`: :class:`~.scripted.ScriptedCritic`, a seeded LLM double for tests and the offline data;
- ``lm-suite critiques generate``: the CLI (:mod:`.__main__`).

The committed offline data ``data/critic/{train,val}.jsonl`` was made from the planted synthetic pairs of
:mod:`datamodules.synthetic` (``data/tiny``) with the scripted critic, with noise so that the filter has work::

    lm-suite critiques generate --pairs data/tiny/train.jsonl --out data/critic/train.jsonl \\
        --backend scripted --refine summ --n 4 --flip-rate 0.15 --unparseable-rate 0.05 --seed 0
    lm-suite critiques generate --pairs data/tiny/val.jsonl --out data/critic/val.jsonl \\
        --backend scripted --refine summ --n 4 --flip-rate 0.15 --unparseable-rate 0.05 --seed 0

(each also writes ``<out>.stats.json``).
"""

from pipelines.critiques.parse import parse_rating, parse_score
from pipelines.critiques.pipeline import (
    CritiqueConfig,
    CritiquePair,
    CritiqueReport,
    FilterResult,
    critique_pairs,
    filter_critiques,
    read_pairs,
    stats_path,
    write_critiques,
)
from pipelines.critiques.scripted import ScriptedCritic
from pipelines.critiques.templates import CRITIQUE_TEMPLATE, JUDGE_TEMPLATE, SUMMARY_TEMPLATE, Templates

__all__ = [
    "CRITIQUE_TEMPLATE",
    "JUDGE_TEMPLATE",
    "SUMMARY_TEMPLATE",
    "CritiqueConfig",
    "CritiquePair",
    "CritiqueReport",
    "FilterResult",
    "ScriptedCritic",
    "Templates",
    "critique_pairs",
    "filter_critiques",
    "parse_rating",
    "parse_score",
    "read_pairs",
    "stats_path",
    "write_critiques",
]
