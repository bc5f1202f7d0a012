"""Command line of the Critic-RM critique pipeline (Yu et al. 2025, NAACL).

Yu et al. 2025, "Self-Generated Critiques Boost Reward Modeling for Language Models": critiques of both responses
of each preference pair, filtered for consistency with the label and refined (summ / rank); see :mod:`.pipeline`.

::

    lm-suite critiques generate --pairs pairs.jsonl --out critiques.jsonl --model hf:ORG/NAME --n 4
    lm-suite critiques generate --pairs data/tiny/train.jsonl --out data/critic/train.jsonl \\
        --backend scripted --refine summ --n 4 --flip-rate 0.15 --unparseable-rate 0.05

User errors (bad input, settings or templates) print one line ``error: ...`` and exit with status 2. A run holds an
exclusive lock on ``--out`` (:func:`core.locks.output_lock`) from before it reads anything until its statistics are
written: a second run into the same file stops at once with such an error, naming the first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from core.errors import DataError, MissingExtraError
from core.generation import Generator, build_generator
from core.locks import output_lock
from pipelines.critiques.pipeline import (
    DEFAULT_CHUNK_SIZE,
    REFINE_METHODS,
    CritiqueConfig,
    dropped_path,
    read_pairs,
    write_critiques,
)
from pipelines.critiques.scripted import ScriptedCritic
from pipelines.critiques.templates import Templates, load_template
from pipelines.resumable import failures_path

__all__ = ["BACKENDS", "add_arguments", "build_parser", "main", "run"]

PROG = "lm-suite critiques"
BACKENDS = ("hf", "vllm", "scripted")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``generate`` command's arguments."""
    parser.add_argument("--pairs", required=True, help="input preference pairs JSONL (prompt, chosen, rejected)")
    parser.add_argument("--out", required=True, help="output JSONL (stats: <out>.stats.json, failures: "
                        "<out>.failures.jsonl)")
    parser.add_argument("--backend", choices=BACKENDS, default="hf",
                        help="critic LLM: hf, vllm, or the offline scripted double (default: hf)")
    parser.add_argument("--model", default="tiny-llama", help="critic model name for hf/vllm (default: tiny-llama)")
    parser.add_argument("--device", default="cpu", help="device of the hf backend (default: cpu)")
    parser.add_argument("--n", type=int, default=4, help="candidate critiques per response (default: 4)")
    parser.add_argument("--refine", choices=REFINE_METHODS, default="summ",
                        help="quality-aware refinement: none, summ (summarise) or rank (LLM judge) (default: summ)")
    parser.add_argument("--top-k", type=int, default=1, help="critiques kept per response by rank (default: 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per LLM answer (default: 256)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per hf generate call (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--retries", type=int, default=2, help="further attempts of a failed request (default: 2)")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
        help=f"pairs per atomically written part; the unit of resumption (default: {DEFAULT_CHUNK_SIZE})",
    )
    for kind in ("critique", "summary", "judge"):
        parser.add_argument(f"--{kind}-template", default=None, metavar="FILE",
                            help=f"a str.format template file replacing the built-in {kind} template")
    parser.add_argument("--flip-rate", type=float, default=0.0,
                        help="scripted backend: fraction of critiques with a wrong verdict (default: 0)")
    parser.add_argument("--unparseable-rate", type=float, default=0.0,
                        help="scripted backend: fraction of answers without a score line (default: 0)")
    parser.set_defaults(run=run)
    return parser


def templates_from_args(args: argparse.Namespace) -> Templates:
    """The built-in templates, each replaced by its template file if one was given."""
    files = {kind: getattr(args, f"{kind}_template") for kind in ("critique", "summary", "judge")}
    return Templates(**{kind: load_template(path, kind) for kind, path in files.items() if path is not None})


def generator_from_args(args: argparse.Namespace, templates: Templates) -> Generator:
    if args.backend == "scripted":
        return ScriptedCritic(args.seed, args.flip_rate, args.unparseable_rate, templates)
    return build_generator(args.backend, args.model, temperature=args.temperature, top_p=args.top_p,
                           batch_size=args.batch_size, seed=args.seed, device=args.device)


def generator_meta(args: argparse.Namespace) -> dict[str, Any]:
    """The backend settings a resumed run must share."""
    if args.backend == "scripted":
        return dict(backend="scripted", seed=args.seed, flip_rate=args.flip_rate,
                    unparseable_rate=args.unparseable_rate)
    return dict(backend=args.backend, model=args.model, seed=args.seed, temperature=args.temperature,
                top_p=args.top_p)


def run(args: argparse.Namespace) -> int:
    """Run the ``generate`` command: check everything, read the pairs, then build the generator and run."""
    try:
        if args.backend != "scripted" and (args.flip_rate or args.unparseable_rate):
            raise ValueError("--flip-rate and --unparseable-rate apply only to --backend scripted")
        for name in ("flip_rate", "unparseable_rate"):
            if not 0.0 <= getattr(args, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
        if args.chunk_size < 1:
            raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
        templates = templates_from_args(args)
        config = CritiqueConfig(n=args.n, refine=args.refine, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                                retries=args.retries, templates=templates)
        with output_lock(args.out):  # the parts, the output, its failures, dropped pairs and stats: one run's
            pairs = read_pairs(args.pairs)
            generator = generator_from_args(args, templates)
            report = write_critiques(pairs, args.out, generator, config, chunk_size=args.chunk_size,
                                     meta=generator_meta(args))
    except (DataError, MissingExtraError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_report = report.run
    print(
        f"wrote {run_report.pairs} critiqued pairs of {run_report.prompts} to {run_report.out} in "
        f"{run_report.seconds:.2f} s ({run_report.parts} parts: {run_report.parts_written} written, "
        f"{run_report.parts_kept} kept from an earlier run); stats in {report.stats_path}"
    )
    print(json.dumps(report.stats, indent=2))
    if run_report.failures:
        print(f"{run_report.failures} pairs failed; see {failures_path(run_report.out)}")
    if sum(report.stats["pairs_dropped"].values()) > report.stats["pairs_dropped"]["generation_failed"]:
        print(f"dropped pairs, with all their candidate critiques: {dropped_path(run_report.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with the ``generate`` command."""
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_arguments(commands.add_parser(
        "generate", help="critiques of preference pairs: generate, filter for consistency, refine (summ / rank)",
    ))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
