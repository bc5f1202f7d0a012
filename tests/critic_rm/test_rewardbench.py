"""RewardBench evaluation: hand-computed section scores, the metrics (merged as DDP's sum reduction does), the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from core.errors import DataError
from lightning_modules.critic_rm.metrics import (
    SECTIONS,
    PairwiseAccuracy,
    RewardBenchAccuracy,
    ordered_subsets,
    section_scores,
)
from pipelines.rewardbench import format_table, main, read_rewardbench, tiny_rewardbench_rows, write_tiny_rewardbench

REPO = Path(__file__).resolve().parents[2]

# (subset, chosen reward, rejected reward). Hand computation, "tie" = wrong:
#   alpacaeval-easy  4 pairs: right, right, tie, wrong  -> 2/4 = 0.5          (Chat)
#   mt-bench-easy    2 pairs: right, right              -> 2/2 = 1.0          (Chat)
#   llmbar-natural   3 pairs: right, right, tie         -> 2/3                (Chat Hard)
#   math-prm         4 pairs: right, tie, wrong, wrong  -> 1/4 = 0.25         (Reasoning)
#   hep-go           2 pairs: right, right              -> 2/2 = 1.0          (Reasoning)
#   hep-rust         1 pair:  wrong                     -> 0/1 = 0.0          (Reasoning)
#   custom-set       2 pairs: right, wrong              -> 1/2 = 0.5          (no section)
# Chat      = (0.5*4 + 1.0*2) / (4 + 2) = 4/6 = 2/3
# Chat Hard = 2/3 (one subset)
# Reasoning: math-prm weighs the hep-* total 2 + 1 = 3 (not its own 4 pairs):
#           (0.25*3 + 1.0*2 + 0.0*1) / (3 + 2 + 1) = 2.75/6 = 11/24
#   without the up-weight: (0.25*4 + 2 + 0) / (4 + 2 + 1) = 3/7
# Safety: absent -> left out of the mean.
# score     = (2/3 + 2/3 + 11/24) / 3 = (16 + 16 + 11) / 72 = 43/72   (37/63 without the up-weight)
# accuracy  = (2 + 2 + 2 + 1 + 2 + 0 + 1) / 18 = 10/18 = 5/9 (custom-set counts here, in no section)
PAIRS: list[tuple[str, float, float]] = [
    ("alpacaeval-easy", 2.0, 1.0), ("alpacaeval-easy", 1.0, 0.0), ("alpacaeval-easy", 0.5, 0.5),
    ("alpacaeval-easy", 0.0, 1.0),
    ("mt-bench-easy", 3.0, 1.0), ("mt-bench-easy", 0.1, -0.1),
    ("llmbar-natural", 1.0, 0.0), ("llmbar-natural", 2.0, 1.0), ("llmbar-natural", 1.0, 1.0),
    ("math-prm", 1.0, 0.0), ("math-prm", 0.0, 0.0), ("math-prm", 0.0, 1.0), ("math-prm", -1.0, 0.0),
    ("hep-go", 1.0, 0.0), ("hep-go", 5.0, 4.0),
    ("hep-rust", 0.0, 2.0),
    ("custom-set", 1.0, 0.0), ("custom-set", 0.0, 1.0),
]
ACCURACY = {"alpacaeval-easy": 0.5, "mt-bench-easy": 1.0, "llmbar-natural": 2 / 3, "math-prm": 0.25,
            "hep-go": 1.0, "hep-rust": 0.0, "custom-set": 0.5}
COUNTS = {"alpacaeval-easy": 4, "mt-bench-easy": 2, "llmbar-natural": 3, "math-prm": 4, "hep-go": 2, "hep-rust": 1,
          "custom-set": 2}
EXPECTED = {"Chat": 2 / 3, "Chat Hard": 2 / 3, "Reasoning": 11 / 24, "score": 43 / 72}
EXPECTED_TABLE = """\
| section | subset | pairs | weight | accuracy |
|---|---|---:|---:|---:|
| Chat | alpacaeval-easy | 4 | 4 | 0.5000 |
| Chat | mt-bench-easy | 2 | 2 | 1.0000 |
| Chat Hard | llmbar-natural | 3 | 3 | 0.6667 |
| Reasoning | math-prm | 4 | 3 | 0.2500 |
| Reasoning | hep-go | 2 | 2 | 1.0000 |
| Reasoning | hep-rust | 1 | 1 | 0.0000 |
| (none) | custom-set | 2 | - | 0.5000 |

| section | score |
|---|---:|
| Chat | 0.6667 |
| Chat Hard | 0.6667 |
| Safety | absent |
| Reasoning | 0.4583 |
| **score** (mean of 3 sections) | 0.5972 |
| accuracy (all 18 pairs) | 0.5556 |"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    rows = [
        {"id": i, "prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}", "subset": s}
        for i, (s, _, _) in enumerate(PAIRS)
    ]
    rows[0]["prompt"] = [{"role": "user", "content": "question 0"}]  # chat messages read too
    rows[0]["chosen"] = [{"role": "assistant", "content": "good answer 0"}]
    return write_jsonl(tmp_path / "bench.jsonl", rows)


def rewards() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([c for _, c, _ in PAIRS]), torch.tensor([r for _, _, r in PAIRS])


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in result.items()}


def test_section_scores_by_hand() -> None:
    scores = section_scores(ACCURACY, COUNTS)
    assert scores == pytest.approx(EXPECTED, abs=1e-12)
    assert set(scores) == {"Chat", "Chat Hard", "Reasoning", "score"}  # Safety absent, custom-set in no section
    plain = section_scores(ACCURACY, COUNTS, prm_upweight=False)
    assert plain["Reasoning"] == pytest.approx(3 / 7) and plain["score"] == pytest.approx(37 / 63)
    # No hep-* subset present: math-prm keeps its own count; Reasoning is then math-prm's accuracy alone.
    only_prm = section_scores({"math-prm": 0.25, "mt-bench-easy": 1.0}, {"math-prm": 4, "mt-bench-easy": 2})
    assert only_prm == pytest.approx({"Chat": 1.0, "Reasoning": 0.25, "score": 0.625})
    assert section_scores({"custom-set": 0.5}, {"custom-set": 2}) == {}
    with pytest.raises(ValueError, match="hep-go"):
        section_scores({"hep-go": 1.0}, {})


def test_metric_on_hand_made_file_matches_hand_values(bench_file: Path) -> None:
    rows = read_rewardbench(bench_file)
    assert rows[0].prompt == [{"role": "user", "content": "question 0"}]
    assert rows[1].chosen == [{"role": "assistant", "content": "good answer 1"}] and rows[1].where.endswith(":2")
    metric = RewardBenchAccuracy(ordered_subsets({r.subset for r in rows}))
    chosen, rejected = rewards()
    metric.update(chosen, rejected, metric.subset_ids([r.subset for r in rows]))
    got = as_floats(metric.compute())
    want = {"accuracy": 5 / 9, "score": 43 / 72, **{f"section/{s}": v for s, v in EXPECTED.items() if s != "score"},
            **{f"subset/{s}": v for s, v in ACCURACY.items()}}
    assert got == pytest.approx(want, abs=1e-6)
    assert "section/Safety" not in got
    # The metric and the pure function agree exactly (the metric calls it on its counts).
    scores = section_scores(ACCURACY, COUNTS)
    assert got["score"] == pytest.approx(scores["score"], abs=1e-7)
    assert metric.counts() == COUNTS


def test_ties_are_wrong() -> None:
    metric = RewardBenchAccuracy(["mt-bench-easy"])
    metric.update(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert metric.compute()["subset/mt-bench-easy"].item() == 0.5
    pairwise = PairwiseAccuracy()
    pairwise.update(torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0]))
    assert pairwise.compute().item() == pytest.approx(1 / 3)


def test_merged_halves_equal_one_metric_over_all_data() -> None:
    names = ordered_subsets(set(COUNTS))
    chosen, rejected = rewards()
    full = RewardBenchAccuracy(names)
    ids = full.subset_ids([s for s, _, _ in PAIRS])
    full.update(chosen, rejected, ids)
    halves = [RewardBenchAccuracy(names), RewardBenchAccuracy(names)]
    order = torch.randperm(len(PAIRS), generator=torch.Generator().manual_seed(0))  # each rank sees a mixed half
    for part, metric in zip(order.chunk(2), halves, strict=True):
        metric.update(chosen[part], rejected[part], ids[part])
    # What the sum reduction of a DDP sync does: add the state tensors.
    assert torch.equal(halves[0].correct + halves[1].correct, full.correct)
    assert torch.equal(halves[0].total + halves[1].total, full.total)
    halves[0].merge_state(halves[1])
    assert as_floats(halves[0].compute()) == as_floats(full.compute())


def test_pairwise_accuracy_matches_plain_python() -> None:
    rng = torch.Generator().manual_seed(1)
    merged, other = PairwiseAccuracy(), PairwiseAccuracy()
    chosen_all: list[float] = []
    rejected_all: list[float] = []
    for step in range(5):
        chosen = torch.randint(0, 4, (13,), generator=rng).float() / 2  # coarse values, so ties happen
        rejected = torch.randint(0, 4, (13,), generator=rng).float() / 2
        (merged if step % 2 else other).update(chosen, rejected)
        chosen_all += chosen.tolist()
        rejected_all += rejected.tolist()
    expected = sum(c > r for c, r in zip(chosen_all, rejected_all, strict=True)) / len(chosen_all)
    assert any(c == r for c, r in zip(chosen_all, rejected_all, strict=True))
    merged.merge_state(other)
    assert merged.compute().item() == pytest.approx(expected, abs=1e-7)
    with pytest.raises(ValueError, match="shape"):
        PairwiseAccuracy().update(torch.zeros(3), torch.zeros(2))


def test_bad_subset_ids_are_rejected() -> None:
    metric = RewardBenchAccuracy(["hep-go"])
    with pytest.raises(ValueError, match="unknown subset 'hep-js'"):
        metric.subset_ids(["hep-js"])
    with pytest.raises(ValueError, match=r"\[-1, 1\)"):
        metric.update(torch.zeros(1), torch.zeros(1), torch.tensor([1]))
    with pytest.raises(ValueError, match="distinct"):
        RewardBenchAccuracy(["hep-go", "hep-go"])


def test_cli_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scored = write_jsonl(tmp_path / "scored.jsonl",
                         [{"subset": s, "chosen_reward": c, "rejected_reward": r} for s, c, r in PAIRS])
    out = tmp_path / "result.json"
    assert main(["--scores", str(scored), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == EXPECTED_TABLE
    result = json.loads(out.read_text())
    assert result["score"] == pytest.approx(43 / 72, abs=1e-6)
    assert result["accuracy"] == pytest.approx(5 / 9, abs=1e-6)
    assert result["section/Reasoning"] == pytest.approx(11 / 24, abs=1e-6)
    assert result["weight/math-prm"] == 3 and result["count/math-prm"] == 4 and result["pairs"] == 18
    assert result["absent_sections"] == ["Safety"]
    assert format_table(result) == EXPECTED_TABLE


def test_cli_plain_pairwise_accuracy_without_subsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scored = write_jsonl(tmp_path / "plain.jsonl", [{"chosen_reward": c, "rejected_reward": r} for _, c, r in PAIRS])
    assert main(["--scores", str(scored)]) == 0
    assert capsys.readouterr().out.strip() == "| section | score |\n|---|---:|\n| accuracy (all 18 pairs) | 0.5556 |"


@pytest.mark.parametrize(
    ("line", "message"),
    [({"chosen_reward": "high", "rejected_reward": 0.0}, "field 'chosen_reward' must be a finite number"),
     ({"chosen_reward": 1.0}, "missing field 'rejected_reward'")],
)
def test_cli_bad_line_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: dict, message: str
) -> None:
    good = {"subset": "hep-go", "chosen_reward": 1.0, "rejected_reward": 0.0}
    scored = write_jsonl(tmp_path / "scored.jsonl", [good, good, line])
    out = tmp_path / "result.json"
    assert main(["--scores", str(scored), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {scored}:3: {message}")
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists() and list(tmp_path.iterdir()) == [scored]


def test_read_rewardbench_names_the_line_of_a_missing_field(tmp_path: Path) -> None:
    row = {"id": 1, "prompt": "p", "chosen": "a", "rejected": "b", "subset": "alpacaeval-easy"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [row, {k: v for k, v in row.items() if k != "rejected"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'rejected'"):
        read_rewardbench(bad)
    no_subset = write_jsonl(tmp_path / "pairs.jsonl", [{k: v for k, v in row.items() if k != "subset"}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: missing field 'subset'"):
        read_rewardbench(no_subset)
    assert read_rewardbench(no_subset, require_subset=False)[0].subset is None  # any preference file


def test_tiny_file_is_reproducible_and_covers_every_section(tmp_path: Path) -> None:
    path = tmp_path / "tiny.jsonl"
    write_tiny_rewardbench(path, n=64, seed=777)
    assert path.read_text() == (REPO / "data" / "rewardbench_tiny.jsonl").read_text()
    rows = read_rewardbench(path)
    assert len(rows) == 64
    present = {r.subset for r in rows}
    assert all(present & set(members) for members in SECTIONS.values())
    assert {"math-prm", "hep-python"} <= present
    train = [json.loads(line) for line in (REPO / "data" / "tiny" / "train.jsonl").read_text().splitlines()]
    seen = {(t["prompt"], t["chosen"], t["rejected"]) for t in train}
    assert not any((r["prompt"], r["chosen"], r["rejected"]) in seen for r in tiny_rewardbench_rows(64, 777))
    with pytest.raises(ValueError, match="empty"):
        tiny_rewardbench_rows(2, 777)


def test_random_rewards_on_tiny_file_match_python_section_scores() -> None:
    rows = read_rewardbench(REPO / "data" / "rewardbench_tiny.jsonl")
    rng = random.Random(3)
    chosen = [rng.choice([0.0, 0.5, 1.0]) for _ in rows]
    rejected = [rng.choice([0.0, 0.5, 1.0]) for _ in rows]
    metric = RewardBenchAccuracy(ordered_subsets({r.subset for r in rows}))
    metric.update(torch.tensor(chosen), torch.tensor(rejected), metric.subset_ids([r.subset for r in rows]))
    counts: dict[str, int] = {}
    correct: dict[str, int] = {}
    for r, c, j in zip(rows, chosen, rejected, strict=True):
        counts[r.subset] = counts.get(r.subset, 0) + 1
        correct[r.subset] = correct.get(r.subset, 0) + (c > j)
    scores = section_scores({s: correct[s] / counts[s] for s in counts}, counts)
    got = as_floats(metric.compute())
    assert got["score"] == pytest.approx(scores["score"], abs=1e-6)
    assert all(got[f"section/{s}"] == pytest.approx(scores[s], abs=1e-6) for s in SECTIONS)
