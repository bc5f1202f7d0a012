"""``lm-suite``: the suite's one console command, the training CLI and every offline tool (litgpt-style).

::

    lm-suite fit --config configs/dpo.yaml              # the training CLI (pipelines.train, a LightningCLI)
    lm-suite if synth --n 48000 --out prompts.jsonl     # an offline tool: the rest of the line is the tool's own
    lm-suite prefix extract --help                      # a tool's own help
    lm-suite --help                                     # every command, one line each

:data:`COMMANDS` maps each name to a ``"module:function"`` string and a help line (a group, such as ``if`` or
``prefix``, maps to a dict of those). Only the chosen command's module is imported, so ``lm-suite --help`` loads
no torch, Lightning or transformers. The exit status is what the tool returns (an int; anything else counts as 0)
or raises (``SystemExit``); a user error (:mod:`core.errors`) is one ``error: ...`` line and status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError, DataError, MissingExtraError

__all__ = ["COMMANDS", "Command", "iter_commands", "main", "resolve"]

PROG = "lm-suite"
HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Command:
    """One subcommand: the function it runs (``"module:function"``) and its one-line help."""

    target: str
    help: str
    #: The function parses the subcommand name itself (``pipelines.train.main(["fit", ...])``): pass it first.
    forward_name: bool = False
    #: False: the function takes no ``argv`` and reads ``sys.argv`` (set for the call).
    takes_argv: bool = True
    #: The function may re-run the console command (Lightning's DDP launcher re-executes ``sys.argv``), so
    #: ``sys.argv`` stays the real invocation instead of naming the subcommand for the usage line.
    relaunches: bool = False


Group = dict[str, Command]
Entry = Command | Group


def _train(help_text: str) -> Command:
    """A LightningCLI subcommand of :func:`pipelines.train.main`, which reads ``sys.argv`` (set to ``lm-suite fit
    ...``): passing ``args`` as well makes LightningCLI warn, and the DDP launcher re-runs ``sys.argv``."""
    return Command("pipelines.train:main", help_text, forward_name=True, takes_argv=False, relaunches=True)


def _if(help_text: str) -> Command:
    """A command of ``python -m pipelines.instruction_following`` (which dispatches it itself)."""
    return Command("pipelines.instruction_following.__main__:main", help_text, forward_name=True)


#: Every subcommand. A group's commands show in ``--help`` as ``GROUP NAME``.
COMMANDS: dict[str, Entry] = {
    "fit": _train("train a model (LightningCLI: --config configs/<objective>.yaml, --model, --data, ...)"),
    "validate": _train("run the validation loop of a config / checkpoint (--ckpt_path)"),
    "test": _train("run the test loop of a config / checkpoint (--ckpt_path)"),
    "predict": _train("run the prediction loop of a config / checkpoint (--ckpt_path)"),
    "if": {
        "synth": _if("instruction-following prompts: base tasks plus conflict-free verifiable constraints"),
        "rs": _if("rejection-sampling pairs: N samples per prompt, best vs a lower one"),
        "mcts": _if("MCTS pairs: sibling segments that share a prefix and differ in value"),
        "curate": _if("filter, sample and mix preference pairs (contrast, score, complexity, method)"),
        "subsets": _if("equal-sized ablation subsets of preference pairs (prefix, contrast, complexity)"),
        "score": _if("IFEval strict/loose accuracies of responses"),
        "job": _if("the main job end to end: prompts, RS + MCTS pairs, DPO, held-out accuracy"),
    },
    "critiques": {
        "generate": Command(
            "pipelines.critiques.__main__:main",
            "Critic-RM critiques of preference pairs: generate, filter for consistency, refine (summ / rank)",
            forward_name=True,
        ),
    },
    "export": Command("pipelines.export:main", "export a DPO, SFT or CriticRM checkpoint as a Hugging Face folder"),
    "score-rewards": Command(
        "pipelines.score_rewards:main", "score a JSONL file with a CriticRM checkpoint (critiques, then rewards)"
    ),
    "rewardbench": Command(
        "pipelines.rewardbench:main", "RewardBench table of scored pairs, or write the tiny RewardBench-format file"
    ),
    "prefix": {
        "extract": Command(
            "pipelines.prefix_extract:main", "cache fixed text representations under registered task prefixes"
        ),
        "report": Command(
            "pipelines.prefix_report:main", "prefix representations vs multi-task vs frozen encoder, per target task"
        ),
    },
    "nrg": Command("pipelines.nrg:main", "Normalized Relative Gain of runs (UNIREX: faithfulness, plausibility, task)"),
    "teacher-cache": Command(
        "pipelines.teacher_cache:main", "fill an MSD run's teacher-output cache (its training flags; --device)"
    ),
    "data": {
        "preference": Command("datamodules.synthetic:main", "synthetic preference pairs with a planted answer"),
        "multimodal": Command(
            "datamodules.multimodal_synthetic:main", "image + text classification, label planted in image/text/both"
        ),
        "multitask": Command(
            "datamodules.multitask_synthetic:main", "synthetic multi-task suite (source and target tasks)"
        ),
        "rationale": Command(
            "datamodules.rationale_synthetic:main", "rationale data: planted cue words are the gold rationale"
        ),
    },
}


def iter_commands(table: dict[str, Entry] | None = None) -> Iterator[tuple[tuple[str, ...], Command]]:
    """Every command with its path of names (``("fit",)``, ``("if", "synth")``), in table order."""
    for name, entry in (COMMANDS if table is None else table).items():
        if isinstance(entry, Command):
            yield (name,), entry
        else:
            for path, command in iter_commands(entry):
                yield (name, *path), command


def resolve(target: str) -> Callable[..., Any]:
    """Import ``"module:function"`` and return the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _help(path: tuple[str, ...] = ()) -> str:
    """The listing of every command (or of one group's) with its help line."""
    table: dict[str, Entry] = COMMANDS
    for name in path:
        table = table[name]  # type: ignore[assignment]
    prog = " ".join((PROG, *path))
    rows = [(" ".join(p), c.help) for p, c in iter_commands(table)]
    width = max(len(name) for name, _ in rows) + 2
    lines = [
        f"usage: {prog} COMMAND [ARGS ...]",
        "",
        "The suite's training CLI and offline tools." if not path else f"The {prog} commands.",
        f"`{prog} COMMAND --help` shows a command's own help.",
        "",
        "commands:",
        *(f"  {name:<{width}}{text}" for name, text in rows),
    ]
    return "\n".join(lines)


def _user_error(exc: BaseException | None) -> BaseException | None:
    """The first user error (bad data, settings, missing extra, unknown model) in ``exc``'s chain, if any."""
    kinds: tuple[type[BaseException], ...] = (ConfigError, DataError, MissingExtraError)
    backbones = sys.modules.get("core.backbones")  # imported only if a tool loaded it: no torch for the check
    if backbones is not None and hasattr(backbones, "UnknownModelError"):
        kinds = (*kinds, backbones.UnknownModelError)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _run(path: tuple[str, ...], command: Command, rest: list[str]) -> int:
    """Call the command's function with ``rest`` (after its name when it parses that itself); its exit status."""
    func = resolve(command.target)
    args = [path[-1], *rest] if command.forward_name else list(rest)
    if command.relaunches:
        argv0 = sys.argv[0] if sys.argv else PROG  # a relaunch re-runs this very console command
    else:
        argv0 = " ".join((PROG, *(path[:-1] if command.forward_name else path)))  # argparse's usage line
    saved = sys.argv
    sys.argv = [argv0, *args]
    try:
        result = func(args) if command.takes_argv else func()
    except Exception as exc:
        user = _user_error(exc)
        if user is None:
            raise
        print(f"error: {user}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _unknown(name: str, path: tuple[str, ...], table: dict[str, Entry]) -> int:
    prog = " ".join((PROG, *path))
    print(f"{prog}: error: unknown command {name!r} (choose from: {', '.join(table)})", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lm-suite`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    table: dict[str, Entry] = COMMANDS
    path: tuple[str, ...] = ()
    while True:
        if not argv or argv[0] in HELP_FLAGS:
            print(_help(path))
            return 0
        name, argv = argv[0], argv[1:]
        entry = table.get(name)
        if entry is None:
            return _unknown(name, path, table)
        path = (*path, name)
        if isinstance(entry, Command):
            return _run(path, entry, argv)
        table = entry


if __name__ == "__main__":
    sys.exit(main())
