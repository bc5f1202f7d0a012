"""Segment-level MCTS pairs (Kim et al. 2025, NAACL; UCT of Kocsis & Szepesvari 2006, PUCT of Silver et al.):
a scripted policy whose segments and completions have known constraint outcomes, so that the search finds the best
response and every pair shares exactly its recorded prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.instruction_following import pairs as pairs_module
from pipelines.instruction_following.__main__ import main
from pipelines.instruction_following.mcts import SEGMENT_STOPS, MCTSConfig, Node, make_pairs_mcts, mcts_search
from pipelines.instruction_following.pairs import PromptRecord, score_response

IDS = ["punctuation:no_comma", "change_case:english_lowercase"]

# prefix -> next segments (sampled with stop strings); prefix -> completion (a rollout, no stop strings)
SEGMENTS = {
    "": ["Bad, start. ", "good start. ", "Good start. "],
    "good start. ": ["With, Comma. ", "more text. "],
    "Good start. ": ["then, more. ", "then more. "],
    "good start. more text. ": ["the end."],
}
COMPLETIONS = {
    "Bad, start. ": "still, Bad.",  # 0.0
    "good start. ": "With, Comma.",  # 0.0 (a poor rollout of a good prefix)
    "Good start. ": "then more.",  # 0.5
    "good start. With, Comma. ": "done.",  # 0.0
    "good start. more text. ": "the end.",  # 1.0
    "Good start. then, more. ": "x.",  # 0.0
    "Good start. then more. ": "x.",  # 0.5
    "good start. more text. the end.": "",  # 1.0
}


class ScriptedTree:
    """Continuations fixed by the prefix: segments when stop strings are given, else the completion."""

    def __init__(self, fail_always: bool = False) -> None:
        self.fail_always = fail_always
        self.calls = 0

    def generate(self, prompts, n, max_new_tokens, prefixes=None, stop=None):
        self.calls += 1
        if self.fail_always:
            raise RuntimeError("no device")
        prefixes = prefixes or [""] * len(prompts)
        out = []
        for prefix in prefixes:
            if stop:
                assert stop == SEGMENT_STOPS
                options = SEGMENTS.get(prefix, [""])
                out.append([options[i % len(options)] for i in range(n)])
            else:
                out.append([COMPLETIONS.get(prefix, "")] * n)
        return out


def record(prompt: str = "write about tea", index: int = 0) -> PromptRecord:
    return PromptRecord(index, f"k{index}", prompt, list(IDS), [{}, {}], 2)


@pytest.mark.parametrize("selection", ["uct", "puct"])
def test_mcts_finds_best_and_pairs_share_prefix(selection: str) -> None:
    config = MCTSConfig(k=3, iterations=12, max_depth=4, selection=selection, margin=0.25)
    root = mcts_search(record(), ScriptedTree(), config)
    assert isinstance(root, Node) and root.best is not None
    assert root.best == (1.0, "good start. more text. the end.")
    pairs = make_pairs_mcts([record()], ScriptedTree(), config)
    assert pairs, "expected pairs"
    best = max(pairs, key=lambda p: p["chosen_score"])
    assert best["chosen_score"] == 1.0 and best["chosen"] == "good start. more text. the end."
    prefixes = set()
    for p in pairs:
        prefix = p["shared_prefix"]
        prefixes.add(prefix)
        assert p["method"] == "mcts"
        assert p["chosen"].startswith(prefix) and p["rejected"].startswith(prefix)
        assert p["chosen"][len(prefix) :] != p["rejected"][len(prefix) :]
        assert p["chosen"][len(prefix) :][:1] and p["rejected"][len(prefix) :][:1]
        assert p["chosen_value"] - p["rejected_value"] >= 0.25 - 1e-9
        assert p["chosen_score"] > p["rejected_score"]
        assert p["chosen_score"] == score_response(p["chosen"], record())
        assert p["rejected_score"] == score_response(p["rejected"], record())
        assert p["constraints"]["instruction_id_list"] == IDS
    assert "good start. " in prefixes  # a pair below the root: a non-empty shared prefix
    assert "" in prefixes


def test_margin_filters_pairs() -> None:
    config = MCTSConfig(k=3, iterations=12, max_depth=4, margin=1.0)
    pairs = make_pairs_mcts([record()], ScriptedTree(), config)
    assert all(p["chosen_value"] - p["rejected_value"] >= 1.0 - 1e-9 for p in pairs)
    assert [p["shared_prefix"] for p in pairs] == ["good start. "]


def test_mcts_failure_is_recorded() -> None:
    gen = ScriptedTree(fail_always=True)
    out = make_pairs_mcts([record()], gen, MCTSConfig(retries=2))
    assert len(out) == 1 and out[0]["error"].startswith("RuntimeError") and out[0]["method"] == "mcts"
    assert gen.calls == 1 + 3  # the batch attempt, then 1 + 2 retries


def test_cli_mcts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        json.dumps({"key": 0, "prompt": "write", "instruction_id_list": IDS, "kwargs": [{}, {}], "complexity": 2})
        + "\n"
    )
    monkeypatch.setattr(pairs_module, "build_generator", lambda *a, **k: ScriptedTree())
    out = tmp_path / "mcts.jsonl"
    args = ["mcts", "--prompts", str(src), "--out", str(out), "--k", "3", "--iterations", "12", "--margin", "0.25"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["chosen"].startswith(r["shared_prefix"]) for r in rows)
    assert max(r["chosen_score"] for r in rows) == 1.0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="selection"):
        MCTSConfig(selection="greedy")
    with pytest.raises(ValueError, match="margin"):
        MCTSConfig(margin=0)
