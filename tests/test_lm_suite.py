"""The ``lm-suite`` console command (pipelines/cli.py): help, dispatch, exit statuses, and real runs through it."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError
from pipelines import cli
from pipelines.cli import COMMANDS, Command, iter_commands, main, resolve

ROOT = Path(__file__).resolve().parents[1]
ALL = [pytest.param(path, command, id=" ".join(path)) for path, command in iter_commands()]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter at the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    """The subcommand names of an argparse parser."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []], ids=["--help", "-h", "no-args"])
def test_help_lists_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.strip() for line in lines if line.startswith("  ")]
    for path, command in iter_commands():
        name = " ".join(path)
        assert any(line.startswith(name + " ") and line.endswith(command.help) for line in listed), name
    assert len(listed) == len(list(iter_commands()))


def test_group_help_lists_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prefix", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: lm-suite prefix COMMAND" in out
    assert all(name in out for name in COMMANDS["prefix"])
    assert "fit" not in out


def test_help_imports_no_heavy_library() -> None:
    done = _python(
        "import sys; from pipelines.cli import main; rc = main(['--help']); main(['if', '--help']); "
        "heavy = sorted(m for m in ('torch', 'lightning', 'transformers', 'datasets') if m in sys.modules); "
        "assert rc == 0 and not heavy, heavy"
    )
    assert done.returncode == 0, done.stderr
    assert "if synth" in done.stdout


@pytest.mark.parametrize(("path", "command"), ALL)
def test_every_target_resolves(path: tuple[str, ...], command: Command) -> None:
    func = resolve(command.target)
    assert callable(func)
    params = list(inspect.signature(func).parameters.values())
    if command.takes_argv:  # called as func(argv)
        assert params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
    else:  # called as func(), reading sys.argv
        assert all(p.default is not p.empty for p in params)


def test_groups_match_the_tools_own_dispatchers() -> None:
    """A command added to ``python -m pipelines.instruction_following`` or ``.critiques`` must be added here too."""
    from pipelines.critiques.__main__ import build_parser as critiques_parser
    from pipelines.instruction_following.__main__ import build_parser as if_parser

    assert set(COMMANDS["if"]) == _subcommands(if_parser())
    assert set(COMMANDS["critiques"]) == _subcommands(critiques_parser())
    for group in ("if", "critiques"):
        assert all(c.forward_name for c in COMMANDS[group].values())  # type: ignore[union-attr]


def test_console_script_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["lm-suite"] == "pipelines.cli:main"


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and all(name in err[0] for name in COMMANDS)
    assert main(["prefix", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lm-suite prefix: error:") and "extract, report" in err


def test_unknown_command_exit_status_through_the_interpreter() -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "nope"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "unknown command 'nope'" in done.stderr


def test_exit_status_and_argv(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An int return is the status, anything else is 0; SystemExit passes through; a user error is one line + 2;
    sys.argv names the subcommand during the call and is restored after."""
    seen: list[list[str]] = []
    outcomes = iter([3, None, SystemExit(4), RuntimeError("wrapped")])

    def tool(argv: list[str] | None = None) -> int | None:
        seen.append(list(sys.argv))
        outcome = next(outcomes)
        if isinstance(outcome, RuntimeError):
            raise outcome from ConfigError("bad setting")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(cli, "resolve", lambda target: tool)
    before = list(sys.argv)
    assert main(["nrg", "a"]) == 3
    assert main(["data", "preference", "--out", "x"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["if", "synth", "--n", "1"])
    assert exit_info.value.code == 4
    assert main(["export", "--ckpt", "c"]) == 2
    assert capsys.readouterr().err.strip() == "error: bad setting"
    assert sys.argv == before
    assert seen == [["lm-suite nrg", "a"], ["lm-suite data preference", "--out", "x"],
                    ["lm-suite if", "synth", "--n", "1"], ["lm-suite export", "--ckpt", "c"]]


def test_tool_help_is_the_tools_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["nrg", "--help"])
    assert exit_info.value.code == 0
    assert "Normalized Relative Gain" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "preference", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: lm-suite data preference")


def test_if_synth_writes_unique_prompts(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    assert main(["if", "synth", "--n", "200", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 200
    assert len({r["prompt"] for r in rows}) == 200
    assert sorted(r["key"] for r in rows) == list(range(200))


def test_fit_through_the_console_command(tmp_path: Path, one_thread: None) -> None:
    rc = main([
        "fit", "--config", str(ROOT / "configs/dpo.yaml"),
        "--data.train_files", "null", "--data.val_files", "null", "--data.synthetic_size", "32",
        "--data.batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path), "--model.reference_cache_dir", str(tmp_path / "cache"),
    ])
    assert rc == 0
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", map_location="cpu",
                      weights_only=True)
    assert ckpt["global_step"] == 2  # the run trained: two optimiser steps
