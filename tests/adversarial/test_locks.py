"""Two runs into one output never mix (issue 15, defect 4).

A second run into an output that another process is writing stops at once: exit status 2 (or a ``ConfigError``), one
line naming the holder's process id and command, and nothing written. A ``.parts/`` folder without its settings record
(``meta.json``) is discarded, never reused, and parts made with other settings are refused, naming the settings that
differ. The lock holder here is a real second process (:func:`held`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.io import parts_dir
from core.locks import lock_path, output_lock
from pipelines import resumable as resumable_module
from pipelines.critiques.__main__ import main as critiques_main
from pipelines.instruction_following import pairs as pairs_module
from pipelines.instruction_following.__main__ import main
from pipelines.instruction_following.pairs import write_rs_pairs
from pipelines.prefix_extract import main as prefix_main

ROOT = Path(__file__).resolve().parents[2]
IDS = ["punctuation:no_comma", "change_case:english_lowercase"]
# scores on IDS: "hello world" 1, "Hello world" 0.5, "Hello, World" 0: with rule random_lower the seed picks the
# rejected one of the two lower samples
SAMPLES = ["hello world", "Hello world", "Hello, World"]
HOLDER_COMMAND = "lm-suite if rs --out the-other-run"
HOLD = (
    "import sys\n"
    "from core.locks import output_lock\n"
    "with output_lock(sys.argv[1], command=sys.argv[2]):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"
)


@contextmanager
def held(path: Path) -> Iterator[int]:
    """Another process holds the lock on the output ``path`` for the block; yields its process id."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), HOLDER_COMMAND],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (the lock file only by name: the holder owns its content)."""
    return {
        str(p.relative_to(root)): b"" if p.suffix == ".lock" else p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


class ScriptedRS:
    """Fixed samples for every prompt (no model)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def generate(self, prompts, n, max_new_tokens, prefixes=None, stop=None):
        self.calls.append(list(prompts))
        return [[SAMPLES[i % len(SAMPLES)] for i in range(n)] for _ in prompts]


def prompts_file(path: Path, n: int = 6) -> Path:
    lines = [
        json.dumps({"key": i, "prompt": f"write {i}", "instruction_id_list": IDS, "kwargs": [{}, {}], "complexity": 2})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_refused(message: str, pid: int, out: Path) -> None:
    assert "\n" not in message.strip(), message
    assert f"{out}: is being written by process {pid} on " in message
    assert f"({HOLDER_COMMAND}) since " in message


# ------------------------------------------------------------------------------------------------ RS


def test_rs_into_an_output_being_written_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = prompts_file(tmp_path / "prompts.jsonl")
    built: list[object] = []
    monkeypatch.setattr(pairs_module, "build_generator", lambda *a, **k: built.append(a) or ScriptedRS())
    out = tmp_path / "pairs.jsonl"
    argv = ["rs", "--prompts", str(src), "--out", str(out), "--n", "3", "--chunk-size", "2"]
    before = tree(tmp_path)
    with held(out) as pid:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert_refused(err, pid, out)
        assert built == []  # refused before the model is loaded
        with pytest.raises(ConfigError, match=f"is being written by process {pid} on ") as refused:
            write_rs_pairs(src, out, ScriptedRS(), n=3, chunk_size=2)  # the library call too (run_resumable's lock)
        assert_refused(str(refused.value), pid, out)
        assert tree(tmp_path) == {**before, "pairs.jsonl.lock": b""}  # nothing written: no parts, no output
    assert not lock_path(out).exists()  # the holder removed its lock file when it finished
    assert main(argv) == 0  # free again
    assert len(out.read_text().splitlines()) == 6 and not parts_dir(out).exists() and not lock_path(out).exists()


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), HOLDER_COMMAND], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    proc.kill()
    proc.wait(timeout=30)
    assert lock_path(out).is_file()  # left behind, with the dead holder's record
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with output_lock(out):  # re-entrant in one thread
            pass
        assert lock.is_file()
    assert not lock_path(out).exists()


def clean_run(tmp_path: Path, seed: int) -> bytes:
    out = tmp_path / f"clean{seed}.jsonl"
    write_rs_pairs(prompts_file(tmp_path / "prompts.jsonl"), out, ScriptedRS(), n=3, rule="random_lower", seed=seed,
                   chunk_size=2)
    return out.read_bytes()


def test_parts_without_their_settings_record_are_discarded(tmp_path: Path) -> None:
    clean = clean_run(tmp_path, seed=1)
    out = tmp_path / "pairs.jsonl"
    folder = parts_dir(out)
    folder.mkdir()
    # what the crashed racer of the issue left: a part, no meta.json
    stale = {"prompt": "write 0", "chosen": "stale", "rejected": "mix", "chosen_score": 1.0, "rejected_score": 0.0}
    (folder / "part00000.jsonl").write_text(json.dumps(stale) + "\n")
    gen = ScriptedRS()
    with pytest.warns(UserWarning, match=r"pairs\.jsonl\.parts: 1 part\(s\) without a readable settings record"):
        report = write_rs_pairs(tmp_path / "prompts.jsonl", out, gen, n=3, rule="random_lower", seed=1, chunk_size=2)
    assert (report.parts_kept, report.parts_written) == (0, 3)
    assert gen.calls == [["write 0", "write 1"], ["write 2", "write 3"], ["write 4", "write 5"]]
    assert out.read_bytes() == clean
    assert not folder.exists()


def test_parts_made_with_another_seed_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = clean_run(tmp_path, seed=0)
    assert clean != clean_run(tmp_path, seed=1)  # the seed shows in the pairs
    out = tmp_path / "pairs.jsonl"
    real = resumable_module._write_part

    def killed_after_one(path: Path, text: str) -> None:
        if path.name != "part00000.jsonl":
            raise KeyboardInterrupt("killed")
        real(path, text)

    monkeypatch.setattr(pairs_module, "build_generator", lambda *a, **k: ScriptedRS())
    argv = ["rs", "--prompts", str(tmp_path / "prompts.jsonl"), "--out", str(out), "--n", "3", "--chunk-size", "2",
            "--rule", "random_lower", "--seed"]
    monkeypatch.setattr(resumable_module, "_write_part", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "0"])
    monkeypatch.setattr(resumable_module, "_write_part", real)
    left = tree(tmp_path)
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["meta.json", "part00000.jsonl"]

    assert main([*argv, "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other prompts or settings (seed: 0 there, 1 now)" in err
    assert tree(tmp_path) == left  # refused: the earlier run's parts are left as they were

    # the run with the earlier settings finishes that run, and gives a clean run's output
    capsys.readouterr()
    assert main([*argv, "0"]) == 0
    assert "(3 parts: 2 written, 1 kept from an earlier run)" in capsys.readouterr().out
    assert out.read_bytes() == clean


# ------------------------------------------------------------------------------------------------ every writer


def _if(*argv: str) -> Callable[[Path, Path], int]:
    return lambda out, tmp: main([argv[0], *argv[1:], str(out)])


def _critiques(out: Path, tmp: Path) -> int:
    return critiques_main(["generate", "--pairs", str(tmp / "pairs.jsonl"), "--out", str(out), "--backend", "scripted"])


def _prefix(out: Path, tmp: Path) -> int:
    return prefix_main(["--backbone", "tiny-bert", "--prefixes", "none", "--input", str(tmp / "texts.jsonl"),
                        "--out", str(out)])


def _teacher_cache(out: Path, tmp: Path) -> int:
    from pipelines.teacher_cache import main as cache_main

    cache_main(["--config", str(ROOT / "configs/msd.yaml"), "--model.cache_dir", str(out)])
    return 0


# (name, output path under tmp, the run, the first step of its work: a tripwire). Inputs are left unwritten: the lock
# comes before any reading.
WRITERS: list[tuple[str, str, Callable[[Path, Path], int], str | None]] = [
    ("synth", "prompts.jsonl", _if("synth", "--n", "3", "--out"), None),
    ("mcts", "mcts.jsonl", _if("mcts", "--prompts", "missing.jsonl", "--out"), None),
    ("curate", "curated.jsonl", _if("curate", "--pairs", "missing.jsonl", "--out"), None),
    ("subsets", "subsets", _if("subsets", "--pairs", "missing.jsonl", "--ablation", "prefix", "--out-dir"), None),
    ("job", "job", _if("job", "--out"), "pipelines.instruction_following.job._set_threads"),
    ("critiques", "critiques.jsonl", _critiques, None),
    ("prefix-extract", "cache.safetensors", _prefix, None),
    ("teacher-cache", "teacher_cache", _teacher_cache, "pipelines.teacher_cache.teacher_path"),
]


def _tripwire(*args: object, **kwargs: object) -> None:
    raise AssertionError("the run started its work although another process writes its output")


@pytest.mark.parametrize(("out_name", "run", "work"), [w[1:] for w in WRITERS], ids=[w[0] for w in WRITERS])
def test_every_writer_stops_at_once_when_its_output_is_being_written(
    out_name: str, run: Callable[[Path, Path], int], work: str | None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / out_name
    monkeypatch.chdir(tmp_path)  # relative inputs of the runs, and anything written by mistake, land in tmp_path
    if work is not None:  # a long run (training, the whole job): fail fast should the lock not stop it
        monkeypatch.setattr(work, _tripwire)
    before = tree(tmp_path)
    with held(out) as pid:
        try:
            status = run(out, tmp_path)
            message = capsys.readouterr().err
        except ConfigError as err:
            status, message = 2, f"error: {err}\n"
        assert status == 2
        assert message.startswith("error: ") and message.count("\n") == 1, message
        assert_refused(message, pid, out)
        assert tree(tmp_path) == {**before, lock_path(out).name: b""}  # nothing written
