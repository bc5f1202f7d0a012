"""Segment-level MCTS preference pairs with shared prefixes (Kim et al. 2025, NAACL).

Kim et al. 2025, "A Systematic Examination of Preference Learning through the Lens of Instruction-Following",
find that pairs which share a prefix (the two responses agree up to a point, then branch) give small but
consistent gains; they build them with Monte Carlo Tree Search over response segments. Here, per prompt:

- a **node** is a partial response (its text); the root is the empty response;
- a **segment** is one sentence: generation stops after the first of ``". "``, ``"! "``, ``"? "``, ``"\\n"``
  (kept in the text) or after ``segment_tokens`` tokens;
- **selection** descends from the root through expanded nodes by UCT (Kocsis & Szepesvari 2006, "Bandit based
  Monte-Carlo Planning": ``Q + c * sqrt(ln N / n)``, unvisited children first) or PUCT (Silver et al. 2016/2017,
  AlphaGo / AlphaGo Zero: ``Q + c * P * sqrt(N) / (1 + n)`` with a uniform prior ``P = 1 / k``), ``c = c_uct``;
- **expansion** samples ``k`` next segments of the selected node (identical ones merged); a node is terminal when
  its segment came back empty or it is at ``max_depth``;
- **rollout** completes each new child's response with the policy (up to ``max_new_tokens``) and the verifiers
  score it strictly (:func:`.pairs.score_response`); a terminal node's own text is its rollout;
- **backup** adds the score to every node on the path (value = mean rollout score); each node also keeps the
  best and the worst rollout through it.

After ``iterations`` iterations, every expanded node whose best and worst visited children (by mean value) differ
by at least ``margin`` gives one pair: chosen = the best child's best rollout, rejected = the worst sibling's worst
rollout (so ``chosen_score - rejected_score >= margin``), ``shared_prefix`` = the parent's text, which both start
with exactly (they differ after it). Records have the format of :mod:`.pairs` with ``"method": "mcts"``.

CLI (resumable like ``rs``)::

    lm-suite if mcts --prompts p.jsonl --out pairs.jsonl --model tiny-llama
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DataError, MissingExtraError
from core.generation import GenerationFailure, Generator, generate_with_retries
from core.locks import output_lock
from pipelines.instruction_following.constraints import ConstraintError
from pipelines.instruction_following.pairs import (
    PromptRecord,
    add_generator_arguments,
    failure_record,
    generator_from_args,
    generator_meta,
    pair_record,
    print_report,
    prompts_fingerprint,
    read_prompts,
    score_response,
)
from pipelines.resumable import RunReport, run_resumable

__all__ = ["SEGMENT_STOPS", "MCTSConfig", "Node", "make_pairs_mcts", "mcts_search", "tree_pairs", "write_mcts_pairs"]

SEGMENT_STOPS = [". ", "! ", "? ", "\n"]


@dataclass(frozen=True)
class MCTSConfig:
    """Search settings (module docstring); ``selection`` is ``uct`` or ``puct``."""

    k: int = 4
    iterations: int = 16
    segment_tokens: int = 48
    max_new_tokens: int = 256
    max_depth: int = 8
    c_uct: float = 1.0
    selection: str = "uct"
    margin: float = 0.3
    retries: int = 2

    def __post_init__(self) -> None:
        if self.selection not in ("uct", "puct"):
            raise ValueError(f"selection must be 'uct' or 'puct', got {self.selection!r}")
        for name in ("k", "iterations", "segment_tokens", "max_new_tokens", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.margin <= 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")


@dataclass(eq=False)
class Node:
    """A partial response and its search statistics."""

    text: str
    depth: int = 0
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    terminal: bool = False
    visits: int = 0
    value_sum: float = 0.0
    best: tuple[float, str] | None = None  # (score, full response) of the best rollout through this node
    worst: tuple[float, str] | None = None

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def backup(self, score: float, response: str) -> None:
        node: Node | None = self
        while node is not None:
            node.visits += 1
            node.value_sum += score
            if node.best is None or score > node.best[0]:
                node.best = (score, response)
            if node.worst is None or score < node.worst[0]:
                node.worst = (score, response)
            node = node.parent


def _select_child(node: Node, candidates: list[Node], config: MCTSConfig) -> Node:
    unvisited = [c for c in candidates if c.visits == 0]
    if unvisited:
        return unvisited[0]
    total = max(node.visits, 1)
    prior = 1.0 / len(node.children)

    def ucb(c: Node) -> float:
        if config.selection == "uct":
            return c.value + config.c_uct * math.sqrt(math.log(total) / c.visits)
        return c.value + config.c_uct * prior * math.sqrt(total) / (1 + c.visits)

    return max(candidates, key=ucb)


def _selectable(node: Node) -> bool:
    """Whether the subtree of ``node`` still has something to expand."""
    if not node.children:
        return not node.terminal
    return any(_selectable(c) for c in node.children)


def mcts_search(
    record: PromptRecord, generator: Generator, config: MCTSConfig = MCTSConfig()
) -> Node | GenerationFailure:
    """Run the search for one prompt; the root of the tree, or the failure that stopped it."""
    root = Node("")
    for _ in range(config.iterations):
        if not _selectable(root):
            break
        node = root
        while node.children:
            candidates = [c for c in node.children if _selectable(c)]
            if not candidates:
                break
            node = _select_child(node, candidates, config)
        [segments] = _generate(generator, record, config.k, config.segment_tokens, node.text, SEGMENT_STOPS, config)
        seen: set[str] = set()
        for segment in segments:
            if segment in seen:
                continue
            seen.add(segment)
            child = Node(node.text + segment, node.depth + 1, node)
            child.terminal = not segment.strip() or child.depth >= config.max_depth
            node.children.append(child)
        open_children = [c for c in node.children if not c.terminal]
        if open_children:
            rollouts = _generate_each(generator, record, [c.text for c in open_children], config)
            for child, completion in zip(open_children, rollouts, strict=True):
                response = child.text + completion
                child.backup(score_response(response, record), response)
        for child in node.children:
            if child.terminal:
                child.backup(score_response(child.text, record), child.text)
    return root


class _Failed(Exception):
    def __init__(self, failure: GenerationFailure) -> None:
        super().__init__(failure.error)
        self.failure = failure


def _generate(
    generator: Generator, record: PromptRecord, n: int, max_new_tokens: int, prefix: str, stop: list[str] | None,
    config: MCTSConfig,
) -> list[list[str]]:
    [result] = generate_with_retries(
        generator, [record.prompt], n, max_new_tokens, prefixes=[prefix], stop=stop, retries=config.retries
    )
    if isinstance(result, GenerationFailure):
        raise _Failed(result)
    return [result]


def _generate_each(generator: Generator, record: PromptRecord, prefixes: list[str], config: MCTSConfig) -> list[str]:
    results = generate_with_retries(
        generator, [record.prompt] * len(prefixes), 1, config.max_new_tokens, prefixes=prefixes,
        retries=config.retries,
    )
    for result in results:
        if isinstance(result, GenerationFailure):
            raise _Failed(result)
    return [r[0] for r in results]  # type: ignore[index]


def tree_pairs(root: Node, record: PromptRecord, margin: float) -> list[dict[str, Any]]:
    """One pair per expanded node whose best and worst visited children differ in value by at least ``margin``."""
    out: list[dict[str, Any]] = []
    stack = [root]
    while stack:
        node = stack.pop(0)
        stack.extend(node.children)
        visited = [c for c in node.children if c.visits > 0 and c.best is not None]
        if len(visited) < 2:
            continue
        best = max(visited, key=lambda c: c.value)
        worst = min(visited, key=lambda c: c.value)
        if best is worst or best.value - worst.value < margin - 1e-9:
            continue
        assert best.best is not None and worst.worst is not None
        (c_score, chosen), (r_score, rejected) = best.best, worst.worst
        if c_score <= r_score or chosen == rejected or not rejected.strip():
            continue  # no contrast, or an empty rejected (no pair holds an empty response, as in :mod:`.pairs`)
        assert chosen.startswith(node.text) and rejected.startswith(node.text)
        out.append(
            pair_record(
                record, chosen, rejected, c_score, r_score, "mcts", node.text,
                chosen_value=best.value, rejected_value=worst.value, depth=node.depth,
            )
        )
    return out


def make_pairs_mcts(
    records: Sequence[PromptRecord], generator: Generator, config: MCTSConfig = MCTSConfig()
) -> list[dict[str, Any]]:
    """MCTS pairs of every prompt, plus failure records (with ``error``) for prompts whose generation failed."""
    out: list[dict[str, Any]] = []
    for record in records:
        try:
            root = mcts_search(record, generator, config)
        except _Failed as failed:
            out.append(failure_record(record, failed.failure, "mcts"))
            continue
        assert isinstance(root, Node)
        out.extend(tree_pairs(root, record, config.margin))
    return out


def write_mcts_pairs(
    prompts: str | Path,
    out: str | Path,
    generator: Generator,
    config: MCTSConfig = MCTSConfig(),
    *,
    chunk_size: int = 64,
    meta: dict[str, Any] | None = None,
) -> RunReport:
    """MCTS pairs of every prompt in the JSONL ``prompts`` into ``out``, resumably (see :mod:`.pairs`)."""
    records = read_prompts(prompts)
    settings = dict(method="mcts", **config.__dict__, **(meta or {}))
    return run_resumable(
        records, out, lambda chunk: make_pairs_mcts(chunk, generator, config),
        fingerprint=prompts_fingerprint(records), chunk_size=chunk_size, meta=settings,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``mcts`` command's arguments (used by ``lm-suite if mcts``)."""
    add_generator_arguments(parser)
    d = MCTSConfig()
    parser.add_argument("--k", type=int, default=d.k, help=f"segments sampled per expansion (default: {d.k})")
    parser.add_argument("--iterations", type=int, default=d.iterations, help="search iterations per prompt")
    parser.add_argument("--segment-tokens", type=int, default=d.segment_tokens, help="token budget of a segment")
    parser.add_argument("--max-depth", type=int, default=d.max_depth, help="most segments in a tree path")
    parser.add_argument("--c-uct", type=float, default=d.c_uct, help="exploration constant")
    parser.add_argument("--selection", choices=("uct", "puct"), default=d.selection, help="selection rule")
    parser.add_argument("--margin", type=float, default=d.margin, help="least value gap of a sibling pair")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``mcts`` command."""
    try:
        config = MCTSConfig(
            k=args.k, iterations=args.iterations, segment_tokens=args.segment_tokens,
            max_new_tokens=args.max_new_tokens, max_depth=args.max_depth, c_uct=args.c_uct,
            selection=args.selection, margin=args.margin, retries=args.retries,
        )
        with output_lock(args.out):  # before the model is loaded: a second run into --out stops at once
            report = write_mcts_pairs(
                args.prompts, args.out, generator_from_args(args), config, chunk_size=args.chunk_size,
                meta=dict(seed=args.seed, **generator_meta(args)),
            )
    except (ConstraintError, DataError, MissingExtraError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report, "MCTS")
    return 0
