"""Command line of the instruction-following data pipeline (Kim et al. 2025, NAACL; constraints from IFEval).

Kim et al. 2025, "A Systematic Examination of Preference Learning through the Lens of Instruction-Following":
synthesise prompts with verifiable constraints (IFEval's types, Zhou et al. 2023), then build preference pairs.

::

    lm-suite if synth --n 48000 --seed 0 --out prompts.jsonl
    lm-suite if score --input prompts.jsonl --responses responses.jsonl
    lm-suite if rs --prompts prompts.jsonl --out pairs.jsonl --model tiny-llama --n 4
    lm-suite if mcts --prompts prompts.jsonl --out pairs.jsonl --model tiny-llama
    lm-suite if curate --pairs rs.jsonl mcts.jsonl --out curated.jsonl --min-gap 0.5
    lm-suite if subsets --pairs rs.jsonl mcts.jsonl --ablation contrast --out-dir sub
    lm-suite if job --out runs/if_job

(``python -m pipelines.instruction_following COMMAND ...`` runs the same parser.)

Each command is a subparser that sets ``run`` (a function of the parsed arguments returning the exit status).
``score`` hands its arguments unchanged to :func:`.scoring.main` (so ``score -h`` shows that command's help).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipelines.instruction_following import curate, job, mcts, pairs, scoring, synth

__all__ = ["build_parser", "main"]

PROG = "lm-suite if"

#: Commands whose arguments are passed through, unparsed, to another module's ``main(argv)``.
PASSTHROUGH: dict[str, Callable[[Sequence[str]], int]] = {"score": scoring.main}


#: (command, the function adding its arguments, its module (for the description), one-line help)
COMMANDS: list[tuple[str, Callable[[argparse.ArgumentParser], object], object, str]] = [
    ("synth", synth.add_arguments, synth, "unique prompts: base tasks plus conflict-free verifiable constraints"),
    ("rs", pairs.add_arguments, pairs, "rejection-sampling pairs: N samples per prompt, best vs a lower one"),
    ("mcts", mcts.add_arguments, mcts, "MCTS pairs: sibling segments that share a prefix and differ in value"),
    ("curate", curate.add_curate_arguments, curate,
     "filter, sample and mix preference pairs (by contrast, chosen score, complexity, method, prefix)"),
    ("subsets", curate.add_subsets_arguments, curate,
     "equal-sized ablation subsets of preference pairs (prefix, contrast or complexity) with stats"),
    ("job", job.add_arguments, job,
     "the main job end to end: prompts, warm-up, RS + MCTS pairs, DPO, held-out accuracy before/after"),
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Instruction-following preference data (Kim et al. 2025) with IFEval's verifiable constraints.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add_arguments, module, help_text in COMMANDS:
        doc = getattr(module, "__doc__", None)
        add_arguments(commands.add_parser(name, help=help_text, description=doc.split("\n\n", 1)[0] if doc else None))
    commands.add_parser(
        "score",
        help="IFEval strict/loose accuracies of responses (arguments: see `score -h`)",
        add_help=False,  # -h goes through to scoring.main
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in PASSTHROUGH:
        return PASSTHROUGH[args.command](rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
