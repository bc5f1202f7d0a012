"""Curation of instruction-following pairs (Kim et al. 2025, NAACL): validation with located errors, filters,
proportional mixing, equal-sized ablation subsets, determinism and the ``curate`` / ``subsets`` commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core.errors import DataError
from pipelines.instruction_following.__main__ import main
from pipelines.instruction_following.curate import (
    complexity_bucket,
    contrast,
    contrast_bucket,
    curate,
    has_shared_prefix,
    largest_remainder,
    make_subsets,
    max_mix_size,
    mix,
    read_pairs,
    read_pairs_counted,
    select,
    subset_stats,
    write_subsets,
)

PREFIX = "Intro. "


def pair(key: str, cs: float, rs: float, cplx: int | None, prefix: str = "", **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": f"prompt {key}",
        "chosen": f"{prefix}good {key}",
        "rejected": f"{prefix}bad {key}",
        "chosen_score": cs,
        "rejected_score": rs,
        "constraints": {"instruction_id_list": ["x"] * (cplx or 2), "kwargs": [{}] * (cplx or 2)},
        "key": key,
        **extra,
    }
    if cplx is not None:
        row["complexity"] = cplx
    if prefix:
        row["shared_prefix"] = prefix
    return row


# key: (chosen, rejected, complexity) -> contrast bucket, complexity bucket
RS_ROWS = [
    pair("r0", 1.0, 0.0, 1, method="rs", shared_prefix=""),  # high, easy
    pair("r1", 1.0, 0.5, 2),  # medium, moderate (method and shared_prefix absent: rs, "")
    pair("r2", 2 / 3, 1 / 3, 3, method="rs"),  # low (1/3), moderate
    pair("r3", 1.0, 1 / 3, None, method="rs"),  # high (2/3), moderate (complexity from constraints: 2)
    pair("r4", 0.5, 0.25, 4, method="rs"),  # low, hard
]
MCTS_ROWS = [
    pair("m0", 1.0, 0.0, 1, PREFIX, method="mcts", depth=1),  # high, easy
    pair("m1", 0.75, 0.5, 4, PREFIX),  # low, hard (method absent: mcts from the prefix)
    pair("m2", 1.0, 0.75, 4, PREFIX, method="mcts"),  # low, hard
    pair("m3", 1.0, 0.2, 5, PREFIX, method="mcts"),  # high (0.8), hard
    pair("m4", 0.5, 0.0, 2, PREFIX, method="mcts"),  # medium, moderate
]
FAILURE = {"key": "f", "prompt": "prompt f", "method": "rs", "error": "RuntimeError: boom", "attempts": 3}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    rs = write_jsonl(tmp_path / "rs.jsonl", RS_ROWS[:2] + [FAILURE] + RS_ROWS[2:])
    mcts = write_jsonl(tmp_path / "mcts.jsonl", MCTS_ROWS + [RS_ROWS[0]])  # the last line duplicates r0
    return [rs, mcts]


def keys(pairs: list[dict[str, Any]]) -> list[str]:
    return [p["key"] for p in pairs]


# ------------------------------------------------------------------------------------------------ reading


def test_read_pairs_fills_defaults_and_skips_failures(files: list[Path]) -> None:
    pairs, failures = read_pairs_counted(files)
    assert failures == 1
    assert keys(pairs) == ["r0", "r1", "r2", "r3", "r4", "m0", "m1", "m2", "m3", "m4", "r0"]
    by_key = {p["key"]: p for p in pairs}
    assert by_key["r1"]["method"] == "rs" and by_key["r1"]["shared_prefix"] == ""
    assert by_key["m1"]["method"] == "mcts" and by_key["m1"]["shared_prefix"] == PREFIX
    assert by_key["r3"]["complexity"] == 2
    assert by_key["m0"]["depth"] == 1  # extra fields carried through
    assert read_pairs(files[0]) == pairs[:5]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("chosen"), r"rs\.jsonl:2: missing field 'chosen'"),
        (lambda r: r.update(rejected="  "), r"rs\.jsonl:2: field 'rejected': expected a non-empty string"),
        (lambda r: r.update(prompt=3), r"rs\.jsonl:2: field 'prompt': expected a non-empty string"),
        (lambda r: r.update(chosen_score=1.5), r"rs\.jsonl:2: field 'chosen_score': expected a number in \[0, 1\]"),
        (lambda r: r.update(rejected_score=True), r"rs\.jsonl:2: field 'rejected_score'"),
        (lambda r: r.pop("rejected_score"), r"rs\.jsonl:2: missing field 'rejected_score'"),
        (lambda r: r.update(complexity=0), r"rs\.jsonl:2: field 'complexity': expected an integer >= 1"),
        (lambda r: (r.pop("complexity"), r.pop("constraints")), r"rs\.jsonl:2: missing field 'complexity'"),
        (lambda r: r.update(shared_prefix="Other. "), r"rs\.jsonl:2: field 'shared_prefix': 'chosen' does not start"),
        (lambda r: r.update(shared_prefix=7), r"rs\.jsonl:2: field 'shared_prefix': expected a string"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, change: Any, message: str) -> None:
    bad = dict(RS_ROWS[1], constraints=dict(RS_ROWS[1]["constraints"]))
    change(bad)
    path = write_jsonl(tmp_path / "rs.jsonl", [RS_ROWS[0], bad])
    with pytest.raises(DataError, match=message):
        read_pairs([path])


def test_prefix_must_start_the_rejected_too(tmp_path: Path) -> None:
    row = dict(MCTS_ROWS[0], rejected="bad m0")
    with pytest.raises(DataError, match=r"m\.jsonl:1: field 'shared_prefix': 'rejected' does not start"):
        read_pairs(write_jsonl(tmp_path / "m.jsonl", [row]))


def test_missing_file_and_malformed_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_pairs([tmp_path / "nope.jsonl"])
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(RS_ROWS[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"x\.jsonl:2: malformed JSON"):
        read_pairs(path)


# ------------------------------------------------------------------------------------------------ attributes, select


def test_buckets_and_attributes() -> None:
    assert [contrast_bucket(g) for g in (0.0, 1 / 3, 0.34, 0.5, 0.66, 2 / 3, 1.0)] == [
        "low", "low", "low", "medium", "high", "high", "high",
    ]
    assert [complexity_bucket(c) for c in (1, 2, 3, 4, 9)] == ["easy", "moderate", "moderate", "hard", "hard"]
    assert complexity_bucket(2, easy_max=2, moderate_max=4) == "easy"
    assert contrast_bucket(0.5, low_max=0.5, high_min=0.9) == "low"
    with pytest.raises(ValueError, match="low_max"):
        contrast_bucket(0.5, low_max=0.7, high_min=0.6)
    with pytest.raises(ValueError, match="easy_max"):
        complexity_bucket(1, easy_max=3, moderate_max=3)
    assert contrast(RS_ROWS[3]) == pytest.approx(2 / 3)
    assert has_shared_prefix(MCTS_ROWS[0]) and not has_shared_prefix(RS_ROWS[0])


def test_select_filters_exactly(files: list[Path]) -> None:
    pairs = read_pairs(files)
    assert keys(select(pairs)) == ["r0", "r1", "r2", "r3", "r4", "m0", "m1", "m2", "m3", "m4"]  # duplicate dropped
    assert len(select(pairs, dedupe=False)) == 11
    assert keys(select(pairs, min_gap=0.66)) == ["r0", "r3", "m0", "m3"]
    assert keys(select(pairs, max_gap=1 / 3)) == ["r2", "r4", "m1", "m2"]
    assert keys(select(pairs, min_gap=0.5, max_gap=0.5)) == ["r1", "m4"]
    assert keys(select(pairs, min_chosen=1.0)) == ["r0", "r1", "r3", "m0", "m2", "m3"]
    assert keys(select(pairs, max_chosen=0.5)) == ["r4", "m4"]
    assert keys(select(pairs, complexity={4, 5}, methods=["mcts"])) == ["m1", "m2", "m3"]
    assert keys(select(pairs, shared_prefix=False)) == ["r0", "r1", "r2", "r3", "r4"]
    assert keys(select(pairs, shared_prefix=True, complexity={1})) == ["m0"]
    with pytest.raises(ValueError, match="min_gap"):
        select(pairs, min_gap=0.8, max_gap=0.2)


# ------------------------------------------------------------------------------------------------ mixing


def test_largest_remainder_counts() -> None:
    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder({"high": 0.5, "low": 0.5}, 5) == {"high": 3, "low": 2}
    assert largest_remainder({"a": 0.7, "b": 0.2, "c": 0.1}, 7) == {"a": 5, "b": 1, "c": 1}
    assert largest_remainder({"a": 3, "b": 0}, 4) == {"a": 4, "b": 0}
    with pytest.raises(ValueError, match="sum to 0"):
        largest_remainder({"a": 0}, 3)
    with pytest.raises(ValueError, match="'a' must be a number >= 0"):
        largest_remainder({"a": -1, "b": 2}, 3)
    assert max_mix_size({"high": 4, "low": 10}, {"high": 0.5, "low": 0.5}) == 8
    assert max_mix_size({"high": 4, "low": 10}, {"high": 1, "low": 0}) == 4


def test_mix_proportions_are_exact_and_deterministic() -> None:
    groups = {"a": [{"g": "a", "i": i} for i in range(10)], "b": [{"g": "b", "i": i} for i in range(10)]}
    out = mix(groups, {"a": 0.3, "b": 0.7}, 10, seed=1)
    assert Counter(p["g"] for p in out) == {"a": 3, "b": 7}
    assert len({(p["g"], p["i"]) for p in out}) == 10  # drawn without replacement
    assert out == mix(groups, {"a": 0.3, "b": 0.7}, 10, seed=1)
    assert out != mix(groups, {"a": 0.3, "b": 0.7}, 10, seed=2)
    assert [p["g"] for p in out] != ["a"] * 3 + ["b"] * 7  # shuffled, not group after group
    with pytest.raises(ValueError, match="group 'a' has 10 pairs, 11 needed"):
        mix(groups, {"a": 0.5, "b": 0.5}, 22)
    with pytest.raises(ValueError, match="unknown group"):
        mix(groups, {"c": 1.0}, 2)


def test_curate_sample_and_mix(files: list[Path]) -> None:
    pairs = select(read_pairs(files))
    assert curate(pairs) == pairs
    sample = curate(pairs, n=4, seed=0)
    assert len(sample) == 4 and len(set(keys(sample))) == 4 and sample == curate(pairs, n=4, seed=0)
    mixed = curate(pairs, n=4, mix_weights={"high": 0.5, "low": 0.5})
    assert sorted(contrast_bucket(contrast(p)) for p in mixed) == ["high", "high", "low", "low"]
    # without n: the largest reachable; n=8 gives 3/3/2 (the remainder goes to the first groups), n=9 needs 3 medium
    everything = curate(pairs, mix_weights={"high": 1, "low": 1, "medium": 1})
    assert Counter(contrast_bucket(contrast(p)) for p in everything) == {"high": 3, "low": 3, "medium": 2}
    with pytest.raises(ValueError, match="only 10 selected"):
        curate(pairs, n=11)


# ------------------------------------------------------------------------------------------------ ablation subsets


def test_subsets_have_equal_sizes_and_the_right_arms(files: list[Path]) -> None:
    pairs = select(read_pairs(files))
    prefix = make_subsets(pairs, "prefix")
    assert {arm: len(ps) for arm, ps in prefix.items()} == {"shared": 5, "no_shared": 5}
    assert all(has_shared_prefix(p) for p in prefix["shared"]) and not any(map(has_shared_prefix, prefix["no_shared"]))

    cplx = make_subsets(pairs, "complexity")
    assert list(cplx) == ["easy", "moderate", "hard"] and {len(ps) for ps in cplx.values()} == {2}
    assert sorted(keys(cplx["easy"])) == ["m0", "r0"]
    assert all(complexity_bucket(p["complexity"]) == "hard" for p in cplx["hard"])

    con = make_subsets(pairs, "contrast", seed=3)
    assert list(con) == ["high", "low", "mixed"] and {len(ps) for ps in con.values()} == {4}
    assert sorted(keys(con["high"])) == ["m0", "m3", "r0", "r3"]
    assert sorted(keys(con["low"])) == ["m1", "m2", "r2", "r4"]
    assert Counter(contrast_bucket(contrast(p)) for p in con["mixed"]) == {"high": 2, "low": 2}
    odd = make_subsets(pairs, "contrast", n=3, seed=3)
    assert Counter(contrast_bucket(contrast(p)) for p in odd["mixed"]) == {"high": 1, "low": 2}
    assert set(keys(odd["mixed"])) == set(keys(odd["high"][:1] + odd["low"][:2]))  # nested in the other arms


def test_subset_errors(files: list[Path]) -> None:
    pairs = select(read_pairs(files))
    with pytest.raises(ValueError, match="arm 'high' has 4 pairs, 5 needed"):
        make_subsets(pairs, "contrast", n=5)
    with pytest.raises(ValueError, match="arm 'shared' has no pairs"):
        make_subsets(select(pairs, methods=["rs"]), "prefix")
    with pytest.raises(ValueError, match="unknown ablation 'length'"):
        make_subsets(pairs, "length")
    with pytest.raises(ValueError, match="n must be >= 2"):
        make_subsets(pairs, "contrast", n=1)


def test_subset_stats_values(files: list[Path]) -> None:
    pairs = select(read_pairs(files))
    stats = subset_stats(make_subsets(pairs, "complexity"))
    assert stats["easy"] == {
        "n": 2, "mean_contrast": 1.0, "mean_chosen_score": 1.0, "mean_rejected_score": 0.0, "mean_complexity": 1.0,
        "share_shared_prefix": 0.5, "methods": {"mcts": 1, "rs": 1},
    }
    prefix = subset_stats(make_subsets(pairs, "prefix"))
    assert prefix["shared"]["share_shared_prefix"] == 1.0 and prefix["no_shared"]["share_shared_prefix"] == 0.0
    assert prefix["no_shared"]["mean_complexity"] == pytest.approx((1 + 2 + 3 + 2 + 4) / 5)


def test_written_subsets_are_byte_identical_on_rerun(files: list[Path], tmp_path: Path) -> None:
    def write(out: Path) -> dict[str, bytes]:
        subsets = make_subsets(select(read_pairs(files)), "contrast", seed=7)
        paths = write_subsets(subsets, out, "contrast", {"seed": 7})
        return {name: path.read_bytes() for name, path in paths.items()}

    first = write(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "contrast_high.jsonl", "contrast_low.jsonl", "contrast_mixed.jsonl", "contrast_stats.json",
    ]
    assert write(tmp_path / "a") == first == write(tmp_path / "b")
    assert len(first["mixed"].splitlines()) == 4 and json.loads(first["stats"])["arms"]["mixed"]["n"] == 4


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_curate_filters_and_reports(files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "curated.jsonl"
    args = ["curate", "--pairs", *map(str, files), "--out", str(out), "--min-gap", "0.66", "--method", "rs"]
    assert main(args) == 0
    assert [json.loads(line)["key"] for line in out.read_text().splitlines()] == ["r0", "r3"]
    printed = capsys.readouterr().out
    assert "read 11 pairs from 2 file(s) (1 failure records skipped)" in printed
    assert "selected 2 (8 filtered out, 1 duplicates)" in printed and "wrote 2 pairs" in printed
    assert "method     rs       2 ####" in printed and "  contrast   low      0" in printed


def test_cli_curate_mix_and_sample_are_deterministic(files: list[Path], tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    base = ["curate", "--pairs", *map(str, files), "--seed", "5"]
    assert main([*base, "--out", str(a), "--mix", "high=0.5,low=0.5", "--n", "4"]) == 0
    assert main([*base, "--out", str(b), "--mix", "high=0.5,low=0.5", "--n", "4"]) == 0
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert sorted(contrast_bucket(contrast(r)) for r in rows) == ["high", "high", "low", "low"]
    assert main([*base, "--out", str(c), "--n", "3", "--complexity", "4,5"]) == 0
    picked = [json.loads(line)["key"] for line in c.read_text().splitlines()]
    assert len(set(picked)) == 3 and set(picked) <= {"m1", "m2", "m3", "r4"}  # the complexity 4-5 pairs
    assert picked == keys(curate(select(read_pairs(files), complexity={4, 5}), n=3, seed=5))  # the API's sample


def test_cli_subsets_writes_arms_and_stats(files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub"
    assert main(["subsets", "--pairs", *map(str, files), "--ablation", "prefix", "--out-dir", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["prefix_no_shared.jsonl", "prefix_shared.jsonl", "prefix_stats.json"]
    stats = json.loads((out / "prefix_stats.json").read_text())
    assert stats["n"] == 5 and stats["pools"] == {"shared": 5, "no_shared": 5} and stats["filters"] == {}
    assert stats["arms"]["shared"]["methods"] == {"mcts": 5}
    printed = capsys.readouterr().out
    assert "ablation prefix: 2 arms of 5 pairs" in printed
    assert "  shared           5       5     0.560   0.850    0.290  3.200   1.000" in printed


def test_cli_errors_exit_2(files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = dict(RS_ROWS[0])
    bad.pop("chosen")
    bad_file = write_jsonl(tmp_path / "bad.jsonl", [RS_ROWS[1], bad])
    out = tmp_path / "out.jsonl"
    assert main(["curate", "--pairs", str(files[0]), str(bad_file), "--out", str(out)]) == 2
    assert f"error: {bad_file}:2: missing field 'chosen'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["curate", "--pairs", str(files[0]), "--out", str(out), "--mix", "high=x"]) == 2
    assert "error: --mix: expected BUCKET=WEIGHT" in capsys.readouterr().err
    assert main(["curate", "--pairs", str(files[0]), "--out", str(out), "--complexity", "one"]) == 2
    assert "error: --complexity: expected comma-separated integers" in capsys.readouterr().err
    sub = ["subsets", "--pairs", *map(str, files), "--ablation", "complexity", "--out-dir", str(tmp_path / "s")]
    assert main([*sub, "--method", "rs", "--method", "mcts", "--n", "2"]) == 0
    stats = json.loads((tmp_path / "s" / "complexity_stats.json").read_text())
    assert stats["filters"] == {"method": ["rs", "mcts"]} and stats["n"] == 2
    assert main([*sub, "--n", "3", "--out-dir", str(tmp_path / "t")]) == 2
    assert "error: ablation 'complexity': arm 'easy' has 2 pairs, 3 needed" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
