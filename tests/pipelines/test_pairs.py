"""Rejection-sampling pairs (Kim et al. 2025, NAACL): the rejection rules, ties, empty responses, failures with
retries, the CLI, resumption after a kill, and a tiny HFGenerator smoke test."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from core.errors import MissingExtraError
from core.generation import GenerationFailure, VLLMGenerator, cut_at_stop, generate_with_retries
from pipelines import resumable as resumable_module
from pipelines.instruction_following import pairs as pairs_module
from pipelines.instruction_following.__main__ import main
from pipelines.instruction_following.pairs import (
    PromptRecord,
    make_pairs_rs,
    parts_dir,
    read_prompts,
    score_response,
    select_pair,
    write_rs_pairs,
)

IDS = ["punctuation:no_comma", "change_case:english_lowercase"]

# scores on IDS: comma and capitals -> 0; lowercase without comma -> 1; capital, no comma -> 0.5; empty -> 0
SAMPLES = ["Hello, World", "hello world", "Hello world", ""]


class ScriptedRS:
    """Samples fixed per prompt; ``fail`` maps a prompt to how many calls containing it raise (-1: always)."""

    def __init__(self, samples: dict[str, list[str]], fail: dict[str, int] | None = None) -> None:
        self.samples = samples
        self.fail = dict(fail or {})
        self.calls: list[list[str]] = []

    def generate(self, prompts, n, max_new_tokens, prefixes=None, stop=None):
        self.calls.append(list(prompts))
        for p in prompts:
            left = self.fail.get(p, 0)
            if left:
                self.fail[p] = left - 1 if left > 0 else left
                raise RuntimeError(f"boom on {p!r}")
        return [[self.samples[p][i % len(self.samples[p])] for i in range(n)] for p in prompts]


def record(prompt: str = "write", index: int = 0) -> PromptRecord:
    return PromptRecord(index, f"k{index}", prompt, list(IDS), [{}, {}], 2)


def write_prompts_file(path: Path, prompts: list[str]) -> Path:
    lines = [
        json.dumps({"key": i, "prompt": p, "instruction_id_list": IDS, "kwargs": [{}, {}], "complexity": 2})
        for i, p in enumerate(prompts)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_select_pair_rules() -> None:
    scores = [0.0, 1.0, 0.5, 0.0]
    assert select_pair(scores, "worst") == (1, 0)
    picks = {select_pair(scores, "random_lower", rng=random.Random(s))[1] for s in range(50)}
    assert picks == {0, 2, 3}
    picks = {select_pair(scores, "min_gap", gap=0.75, rng=random.Random(s))[1] for s in range(50)}
    assert picks == {0, 3}
    assert select_pair(scores, "min_gap", gap=1.0) is not None
    assert select_pair([0.5, 0.75], "min_gap", gap=0.5) is None  # nothing far enough below
    assert select_pair([0.5, 0.5, 0.5], "worst") is None  # tie
    assert select_pair([0.5, 0.5], "random_lower") is None
    with pytest.raises(ValueError, match="rejection rule"):
        select_pair(scores, "best")


def test_rs_picks_best_and_rule_rejected() -> None:
    gen = ScriptedRS({"write": SAMPLES, "tie": ["a, b", "c, d"]})
    out = make_pairs_rs([record("write", 0), record("tie", 1)], gen, n=4, rule="worst")
    assert len(out) == 1  # the tie prompt gives no pair
    pair = out[0]
    assert pair["chosen"] == "hello world" and pair["chosen_score"] == 1.0
    assert pair["rejected"] == "Hello, World" and pair["rejected_score"] == 0.0
    assert pair["method"] == "rs" and pair["shared_prefix"] == ""
    assert pair["constraints"] == {"instruction_id_list": IDS, "kwargs": [{}, {}]}
    assert pair["complexity"] == 2 and pair["prompt"] == "write"
    gap = make_pairs_rs([record()], ScriptedRS({"write": SAMPLES}), n=4, rule="min_gap", gap=0.75)
    assert gap[0]["rejected"] == "Hello, World" and gap[0]["rejected_score"] == 0.0  # never the empty sample
    lower = make_pairs_rs([record()], ScriptedRS({"write": ["hello world", "Hello world"]}), n=2, rule="random_lower")
    assert lower[0]["rejected"] == "Hello world" and lower[0]["rejected_score"] == 0.5


def test_empty_response_scores_zero_and_is_never_paired() -> None:
    assert score_response("   ", record()) == 0.0 and score_response("", record()) == 0.0
    assert make_pairs_rs([record()], ScriptedRS({"write": ["   ", "hello world"]}), n=2) == []
    out = make_pairs_rs([record()], ScriptedRS({"write": ["   ", "hello world", "Hello world"]}), n=3)
    assert out[0]["rejected"] == "Hello world" and out[0]["rejected_score"] == 0.5


def test_failures_are_retried_then_recorded() -> None:
    gen = ScriptedRS({"write": SAMPLES, "flaky": SAMPLES, "boom": SAMPLES}, fail={"flaky": 3, "boom": -1})
    out = make_pairs_rs([record("write", 0), record("flaky", 1), record("boom", 2)], gen, n=4, retries=2)
    # flaky fails in the batch call and twice alone, then its last retry succeeds
    assert [r["prompt"] for r in out] == ["write", "flaky", "boom"]
    assert "error" not in out[1] and out[1]["chosen"] == "hello world"
    assert out[2]["error"].startswith("RuntimeError") and out[2]["attempts"] == 3
    assert sum(c == ["boom"] for c in gen.calls) == 3
    bad = generate_with_retries(ScriptedRS({}, fail={"x": -1}), ["x"], 2, 4, retries=0)
    assert isinstance(bad[0], GenerationFailure) and bad[0].attempts == 1


def test_cut_at_stop_keeps_the_earliest_stop() -> None:
    assert cut_at_stop("one. two! three", [". ", "! "]) == "one. "
    assert cut_at_stop("a\nb. c", [". ", "\n"]) == "a\n"
    assert cut_at_stop("none", [". "]) == "none"


def test_vllm_missing_is_a_clear_error() -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match="pip install vllm"):
            VLLMGenerator("hf:none")
    else:  # pragma: no cover - vllm present
        pytest.skip("vllm installed")


def test_resume_after_kill_matches_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [f"p{i}" for i in range(5)]
    samples = {p: SAMPLES[i % 2 :] + SAMPLES[: i % 2] for i, p in enumerate(prompts)}
    samples["p4"] = ["hello world"]  # all tie: no pair
    src = write_prompts_file(tmp_path / "prompts.jsonl", prompts)
    whole = tmp_path / "whole.jsonl"
    write_rs_pairs(src, whole, ScriptedRS(samples), n=4, rule="random_lower", seed=3, chunk_size=2)

    out = tmp_path / "resumed.jsonl"
    real = resumable_module._write_part
    written: list[Path] = []

    def killed_after_one(path: Path, text: str) -> None:
        if written:
            raise KeyboardInterrupt("killed")
        real(path, text)
        written.append(path)

    monkeypatch.setattr(resumable_module, "_write_part", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        write_rs_pairs(src, out, ScriptedRS(samples), n=4, rule="random_lower", seed=3, chunk_size=2)
    assert not out.exists() and len(list(parts_dir(out).glob("part*.jsonl"))) == 1
    monkeypatch.setattr(resumable_module, "_write_part", real)
    gen = ScriptedRS(samples)
    report = write_rs_pairs(src, out, gen, n=4, rule="random_lower", seed=3, chunk_size=2)
    assert report.parts_kept == 1 and report.parts_written == 2
    assert all(p not in ("p0", "p1") for call in gen.calls for p in call)  # done prompts are skipped
    assert out.read_bytes() == whole.read_bytes()
    assert len(out.read_text().splitlines()) == 4 and not parts_dir(out).exists()
    with pytest.raises(Exception, match="other prompts or settings"):
        parts_dir(out).mkdir()
        (parts_dir(out) / "meta.json").write_text("{}")
        write_rs_pairs(src, out, gen, n=4, chunk_size=2)


def test_cli_rs_with_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src = write_prompts_file(tmp_path / "prompts.jsonl", ["write", "boom"])
    gen = ScriptedRS({"write": SAMPLES, "boom": SAMPLES}, fail={"boom": -1})
    monkeypatch.setattr(pairs_module, "build_generator", lambda *a, **k: gen)
    out = tmp_path / "pairs.jsonl"
    assert main(["rs", "--prompts", str(src), "--out", str(out), "--n", "4", "--chunk-size", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["chosen"] == "hello world"
    failures = [json.loads(line) for line in (tmp_path / "pairs.jsonl.failures.jsonl").read_text().splitlines()]
    assert failures[0]["prompt"] == "boom" and "error" in failures[0]
    assert "1 prompts failed" in capsys.readouterr().out
    assert read_prompts(src)[1].complexity == 2


def test_hf_generator_smoke() -> None:
    from core.generation import HFGenerator

    gen = HFGenerator("tiny-llama", batch_size=2, seed=0)
    out = gen.generate(["hi", "write a poem", "x"], 2, 4, prefixes=["a", "", "b. "], stop=[". "])
    assert len(out) == 3 and all(len(row) == 2 and all(isinstance(t, str) for t in row) for row in out)
    assert out == gen.generate(["hi", "write a poem", "x"], 2, 4, prefixes=["a", "", "b. "], stop=[". "])
