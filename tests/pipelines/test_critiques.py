"""Critic-RM critique pipeline (Yu et al. 2025, NAACL): the score parser, the consistency filter, summ / rank
refinement, failures, the CLI (stats, resume after a kill, refused settings, bad input), the scripted critic on the
planted synthetic pairs, and a tiny HFGenerator run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import DataError
from core.io import parts_dir
from datamodules.synthetic import make_pairs
from pipelines import resumable as resumable_module
from pipelines.critiques.__main__ import main
from pipelines.critiques.parse import parse_rating, parse_score
from pipelines.critiques.pipeline import (
    CritiqueConfig,
    CritiquePair,
    StatsTally,
    critique_pairs,
    dropped_path,
    filter_critiques,
    read_pairs,
    stats_path,
    write_critiques,
)
from pipelines.critiques.scripted import VERDICTS, ScriptedCritic, detect_constraint, follows_constraint
from pipelines.critiques.templates import (
    CRITIQUE_TEMPLATE,
    JUDGE_TEMPLATE,
    SUMMARY_TEMPLATE,
    Templates,
    check_template,
    format_critiques,
    load_template,
    split_critiques,
    template_pattern,
)

# ------------------------------------------------------------------------------------------------ parser

ACCEPTED = [
    ("Score: 7/10", 7.0),
    ("Score: 7", 7.0),
    ("score = 7.5 / 10", 7.5),
    ("**Score:** 8/10", 8.0),
    ("**Score**: **8**/10", 8.0),
    ("Score: 8 out of 10", 8.0),
    ("SCORE:8/10.", 8.0),
    ("`Score`: 5", 5.0),
    ("The answer is fine.\n\nFinal score: 6", 6.0),
    ("Score: 0/10", 0.0),
    ("Score: 10/10", 10.0),
    ("Score: 4/5", 8.0),  # another denominator is rescaled to the scale
    ("Score: 3.5 out of 5", 7.0),
    ("Score: 3/10 at first.\nOn reflection:\nScore: 6/10", 6.0),  # the last one wins
]
REJECTED = [
    "",
    "No score here.",
    "Score: N/10",
    "Score: 12/10",
    "Score: 6/5",  # 12 after rescaling
    "Score: -1/10",
    "Score: 7/0",
    "Scored: 7",
    "Score: 8/10, no wait, Score: 11/10",  # the last one decides, and it is invalid
    "Rating: 8/10",  # another label
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_parse_score_accepts(text: str, expected: float) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize("text", REJECTED)
def test_parse_score_rejects(text: str) -> None:
    assert parse_score(text) is None


def test_parse_rating_and_scale() -> None:
    assert parse_rating("**Rating:** 3 out of 10") == 3.0
    assert parse_score("Rating: 8/10", label="Rating") == 8.0
    assert parse_rating("Score: 8/10") is None
    assert parse_score("Score: 4", scale=5) == 4.0
    assert parse_score("Score: 8/10", scale=5) == 4.0
    assert parse_score("Score: 6", scale=5) is None
    with pytest.raises(ValueError, match="scale"):
        parse_score("Score: 1", scale=0)


# ------------------------------------------------------------------------------------------------ templates


def test_templates_fields_and_patterns(tmp_path: Path) -> None:
    for template, kind in ((CRITIQUE_TEMPLATE, "critique"), (SUMMARY_TEMPLATE, "summary"), (JUDGE_TEMPLATE, "judge")):
        assert check_template(template, kind) == template
    filled = CRITIQUE_TEMPLATE.format(prompt="Say hi {x}.", response="hi\n\nthere")
    assert template_pattern(CRITIQUE_TEMPLATE).fullmatch(filled).groupdict() == {
        "prompt": "Say hi {x}.", "response": "hi\n\nthere"}
    assert template_pattern(JUDGE_TEMPLATE).fullmatch(filled) is None
    assert split_critiques(format_critiques(["a\nScore: 1/10", " b "])) == ["a\nScore: 1/10", "b"]
    with pytest.raises(ValueError, match=r"unknown field \{answer\}"):
        check_template("{prompt} {response} {answer}", "critique")
    with pytest.raises(ValueError, match=r"missing field \{critiques\}"):
        check_template("{prompt} {response}", "summary")
    with pytest.raises(ValueError, match="literal braces"):
        check_template("{prompt} {response} {", "critique")
    good = tmp_path / "t.txt"
    good.write_text("P={prompt} R={response} Score {{N}}", encoding="utf-8")
    assert load_template(good, "critique").format(prompt="p", response="r") == "P=p R=r Score {N}"
    with pytest.raises(DataError, match="cannot read"):
        load_template(tmp_path / "none.txt", "judge")
    with pytest.raises(ValueError, match="judge template"):
        Templates(judge="{prompt}")


# ------------------------------------------------------------------------------------------------ a fixed double

TEMPLATES = Templates()
PATTERNS = {kind: template_pattern(getattr(TEMPLATES, kind)) for kind in ("summary", "judge", "critique")}


class Fixed:
    """Answers fixed per request: critiques by response, summaries by response, ratings by critique text.

    ``fail`` holds ``(kind, key)`` requests that always raise; ``calls`` logs ``(kind, number of prompts, n)``.
    """

    def __init__(
        self,
        critiques: dict[str, list[str]],
        summaries: dict[str, str] | None = None,
        ratings: dict[str, str] | None = None,
        fail: set[tuple[str, str]] | None = None,
    ) -> None:
        self.critiques, self.summaries, self.ratings = critiques, summaries or {}, ratings or {}
        self.fail = fail or set()
        self.calls: list[tuple[str, int, int]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []

    def _parse(self, prompt: str) -> tuple[str, dict[str, str]]:
        for kind, pattern in PATTERNS.items():
            match = pattern.fullmatch(prompt)
            if match:
                return kind, match.groupdict()
        raise AssertionError(f"unknown request {prompt!r}")

    def generate(self, prompts, n, max_new_tokens, prefixes=None, stop=None):
        parsed = [self._parse(p) for p in prompts]
        self.calls.append((parsed[0][0], len(prompts), n))
        self.requests.extend(parsed)
        out = []
        for kind, fields in parsed:
            key = fields["critique"] if kind == "judge" else fields["response"]
            if (kind, key) in self.fail:
                raise RuntimeError(f"boom on {kind} {key}")
            if kind == "critique":
                out.append(self.critiques[key][:n])
            elif kind == "summary":
                out.append([self.summaries[key]])
            else:
                out.append([self.ratings[key]])
        return out


def pair(index: int, chosen: str, rejected: str, prompt: str = "Write something.", **extra: Any) -> CritiquePair:
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}
    return CritiquePair(index, f"in.jsonl:{index + 1}", row, prompt, chosen, rejected)


CRITIQUES = {
    # pair A: chosen [8, 3, None, 9] vs rejected [2, 6, 1, None]: means 20/3 and 3
    "good A": ["ca0\nScore: 8/10", "ca1\nScore: 3/10", "ca2 no score", "ca3\nScore: 9/10"],
    "bad A": ["ra0\nScore: 2/10", "ra1\nScore: 6/10", "ra2\nScore: 1/10", "ra3 none"],
    # pair B: inconsistent, mean 5 <= mean 5.5
    "good B": ["Score: 5", "Score: 5", "Score: 5", "Score: 6"],
    "bad B": ["Score: 6", "Score: 6", "Score: 5", "Score: 5"],
    # pair C: no parsed critique of the chosen response
    "good C": ["nothing", "at all", "", "Score: 11/10"],
    "bad C": ["Score: 1", "Score: 2", "Score: 3", "Score: 4"],
}


def test_filter_rule_exact() -> None:
    result = filter_critiques(CRITIQUES["good A"], CRITIQUES["bad A"])
    assert result.chosen_scores == [8.0, 3.0, None, 9.0] and result.rejected_scores == [2.0, 6.0, 1.0, None]
    assert result.chosen_mean == pytest.approx(20 / 3) and result.rejected_mean == 3.0
    assert result.chosen_kept == [0, 3]  # 3 is not above the rejected mean 3
    assert result.rejected_kept == [0, 1, 2]  # all below 6.67
    assert result.dropped is None
    assert filter_critiques(CRITIQUES["good B"], CRITIQUES["bad B"]).dropped == "inconsistent"
    assert filter_critiques(["Score: 5"], ["Score: 5"]).dropped == "inconsistent"  # equal means
    assert filter_critiques(CRITIQUES["good C"], CRITIQUES["bad C"]).dropped == "no_parsed_critique"
    assert filter_critiques(["Score: 9"], ["nope"]).dropped == "no_parsed_critique"


def test_refine_none_keeps_consistent_critiques_and_drops_pairs() -> None:
    gen = Fixed(CRITIQUES)
    pairs = [pair(0, "good A", "bad A", key="a"), pair(1, "good B", "bad B"), pair(2, "good C", "bad C")]
    records = critique_pairs(pairs, gen, CritiqueConfig(n=4, refine="none"))
    assert gen.calls == [("critique", 6, 4)]  # one batched call for the chunk
    a, b, c = records
    assert a == {
        "prompt": "Write something.", "chosen": "good A", "rejected": "bad A", "key": "a",
        "chosen_critique": ["ca0\nScore: 8/10", "ca3\nScore: 9/10"],
        "rejected_critique": ["ra0\nScore: 2/10", "ra1\nScore: 6/10", "ra2\nScore: 1/10"],
        "chosen_critique_scores": [8.0, 9.0],
        "rejected_critique_scores": [2.0, 6.0, 1.0],
        "critique_meta": {
            "refine": "none", "n": 4,
            "chosen": {"candidates": 4, "parsed": 3, "kept": 2, "mean_score": pytest.approx(20 / 3),
                       "unparsed": ["ca2 no score"]},
            "rejected": {"candidates": 4, "parsed": 3, "kept": 3, "mean_score": 3.0, "unparsed": ["ra3 none"]},
        },
    }
    assert b["critique_dropped"] == "inconsistent" and "chosen_critique" not in b
    assert c["critique_dropped"] == "no_parsed_critique"
    assert c["critique_meta"]["chosen"] == {"candidates": 4, "parsed": 0, "kept": 0, "mean_score": None}
    tally = StatsTally()
    assert [tally(r) for r in records] == [True, False, False]
    stats = tally.summary(3, CritiqueConfig(n=4, refine="none"))
    assert stats == {
        "pairs_in": 3, "pairs_kept": 1,
        "pairs_dropped": {"inconsistent": 1, "no_parsed_critique": 1, "generation_failed": 0},
        "critiques_generated": 24, "critiques_parsed": 18, "critiques_unparseable": 6,
        "critiques_dropped_by_filter": 1, "critiques_kept": 5,
        "summaries_fallback": 0, "summaries_inconsistent": 0, "judge_ratings_unparseable": 0, "refine": "none",
        "n": 4,
    }
    # the dropped pairs stay on record with every candidate critique, parseable or not
    assert [(d["where"], d["critique_dropped"]) for d in tally.dropped_records] == [
        ("in.jsonl:2", "inconsistent"), ("in.jsonl:3", "no_parsed_critique")]
    assert tally.dropped_records[1]["candidates"] == {"chosen": CRITIQUES["good C"], "rejected": CRITIQUES["bad C"]}
    assert tally.dropped_records[1]["scores"]["chosen"] == [None] * 4


def test_summary_that_contradicts_the_label_falls_back() -> None:
    # chosen mean 20/3, rejected mean 3 (see CRITIQUES["good A"], ["bad A"])
    summaries = {"good A": "merged good\nScore: 3/10", "bad A": "merged bad\nScore: 7/10"}
    records = critique_pairs([pair(0, "good A", "bad A")], Fixed(CRITIQUES, summaries), CritiqueConfig(refine="summ"))
    (a,) = records
    assert a["chosen_critique"] == "ca3\nScore: 9/10"  # 3 is not above the rejected mean 3: best kept chosen instead
    assert a["rejected_critique"] == "ra2\nScore: 1/10"  # 7 is not below the chosen mean 6.67: lowest kept rejected
    assert [a["critique_meta"][s]["summary_fallback_reason"] for s in ("chosen", "rejected")] == ["inconsistent"] * 2
    tally = StatsTally()
    tally(a)
    stats = tally.summary(1, CritiqueConfig(refine="summ"))
    assert (stats["summaries_fallback"], stats["summaries_inconsistent"]) == (2, 2)


def test_refine_summ_with_fallback_and_failures() -> None:
    critiques = {**CRITIQUES, "good D": ["Score: 9"] * 4, "bad D": ["Score: 1"] * 4}
    summaries = {"good A": "merged good\nScore: 9/10", "bad A": "merged bad, no score"}
    gen = Fixed(critiques, summaries, fail={("summary", "good D"), ("critique", "bad B")})
    pairs = [pair(0, "good A", "bad A"), pair(1, "good B", "bad B"), pair(2, "good D", "bad D")]
    records = critique_pairs(pairs, gen, CritiqueConfig(n=4, refine="summ", retries=1))
    a, b, d = records
    assert a["chosen_critique"] == "merged good\nScore: 9/10" and a["chosen_critique_scores"] == 9.0
    # no score in the rejected summary: the best kept rejected critique (the lowest score) instead
    assert a["rejected_critique"] == "ra2\nScore: 1/10" and a["rejected_critique_scores"] == 1.0
    assert a["critique_meta"]["chosen"]["summary_fallback"] is False
    assert a["critique_meta"]["rejected"]["summary_fallback"] is True
    summary_requests = [f for kind, f in gen.requests if kind == "summary" and f["response"].endswith("A")]
    assert [split_critiques(f["critiques"]) for f in summary_requests[:2]] == [
        ["ca0\nScore: 8/10", "ca3\nScore: 9/10"], ["ra0\nScore: 2/10", "ra1\nScore: 6/10", "ra2\nScore: 1/10"]]
    assert b["stage"] == "critique" and b["error"] == "RuntimeError: boom on critique bad B" and b["attempts"] == 2
    assert b["where"] == "in.jsonl:2" and b["pair"] == pairs[1].row
    assert d["stage"] == "summary" and d["error"].startswith("RuntimeError") and d["pair"]["chosen"] == "good D"
    tally = StatsTally()
    assert [tally(r) for r in records] == [True, True, True]
    stats = tally.summary(3, CritiqueConfig(refine="summ"))
    assert stats["pairs_kept"] == 1 and stats["pairs_dropped"]["generation_failed"] == 2
    assert stats["summaries_fallback"] == 1 and stats["critiques_generated"] == 8


def test_refine_rank_top_k_ties_and_unrated() -> None:
    critiques = {
        "good": ["c0\nScore: 8/10", "c1\nScore: 9/10", "c2\nScore: 8/10", "c3\nScore: 7/10"],
        "bad": ["r0\nScore: 2/10", "r1\nScore: 1/10", "r2\nScore: 3/10", "r3\nScore: 2/10"],
    }
    ratings = {
        "c0\nScore: 8/10": "Rating: 7/10", "c1\nScore: 9/10": "Rating: 7/10",
        "c2\nScore: 8/10": "Fine.\nRating: 9/10", "c3\nScore: 7/10": "no rating",
        **{c: "Rating: 6/10" for c in critiques["bad"]},
    }
    gen = Fixed(critiques, ratings=ratings)
    [record] = critique_pairs([pair(0, "good", "bad")], gen, CritiqueConfig(n=4, refine="rank", top_k=3))
    assert gen.calls == [("critique", 2, 4), ("judge", 8, 1)]
    # chosen: rating 9 first; the two 7s by critique score (9 before 8); the unrated one last (cut by top_k)
    assert record["chosen_critique"] == ["c2\nScore: 8/10", "c1\nScore: 9/10", "c0\nScore: 8/10"]
    assert record["chosen_critique_scores"] == [8.0, 9.0, 8.0]
    # rejected: all rated 6; the lowest score first, then order between the two scored 2
    assert record["rejected_critique"] == ["r1\nScore: 1/10", "r0\nScore: 2/10", "r3\nScore: 2/10"]
    assert record["rejected_critique_scores"] == [1.0, 2.0, 2.0]
    meta = record["critique_meta"]
    assert meta["refine"] == "rank" and meta["top_k"] == 3
    assert meta["chosen"]["ratings"] == [9.0, 7.0, 7.0] and meta["chosen"]["unrated"] == 1
    assert meta["rejected"]["ratings"] == [6.0, 6.0, 6.0] and meta["rejected"]["unrated"] == 0
    [wide] = critique_pairs([pair(0, "good", "bad")], Fixed(critiques, ratings=ratings),
                            CritiqueConfig(n=4, refine="rank", top_k=9))
    assert wide["chosen_critique"][-1] == "c3\nScore: 7/10" and wide["critique_meta"]["chosen"]["ratings"][-1] is None
    tally = StatsTally()
    tally(record)
    assert tally.summary(1, CritiqueConfig(refine="rank"))["judge_ratings_unparseable"] == 1


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="refine"):
        CritiqueConfig(refine="best")
    with pytest.raises(ValueError, match="top_k"):
        CritiqueConfig(top_k=0)
    with pytest.raises(ValueError, match="n "):
        CritiqueConfig(n=0)


# ------------------------------------------------------------------------------------------------ scripted critic


def test_scripted_critic_answers() -> None:
    assert detect_constraint("List 3 fruits in lowercase letters only.") == ("lowercase", None)
    assert detect_constraint("Write 2 cities in capital letters.") == ("uppercase", None)
    assert detect_constraint("Name 2 tools and do not use any commas.") == ("no_comma", None)
    assert detect_constraint('Name 2 cats and end your answer with the phrase "Thanks."') == ("end_phrase", "Thanks.")
    assert detect_constraint("Tell me a joke.") is None
    assert follows_constraint("a and b. Thanks.", "end_phrase", "Thanks.")
    assert not follows_constraint("Pear, plum.", "lowercase")
    critic = ScriptedCritic(seed=1)
    prompt = "List 2 fruits in lowercase letters only."
    good = critic.answer(CRITIQUE_TEMPLATE.format(prompt=prompt, response="pear, plum."))
    bad = critic.answer(CRITIQUE_TEMPLATE.format(prompt=prompt, response="Pear, Plum."))
    assert good.startswith(VERDICTS["lowercase"][0] + "\nScore: ") and 7 <= parse_score(good) <= 10
    assert bad.startswith(VERDICTS["lowercase"][1] + "\nScore: ") and 1 <= parse_score(bad) <= 4
    assert good == ScriptedCritic(seed=1).answer(CRITIQUE_TEMPLATE.format(prompt=prompt, response="pear, plum."))
    summary = critic.answer(SUMMARY_TEMPLATE.format(
        prompt=prompt, response="pear, plum.", critiques=format_critiques(["A.\nScore: 8/10", "B.\nScore: 9/10"])))
    assert summary == "A.\nScore: 9/10"  # the first line, the mean 8.5 rounded half up
    judge = JUDGE_TEMPLATE.format
    assert parse_rating(critic.answer(judge(prompt=prompt, response="pear, plum.", critique=good))) == 9.0
    assert parse_rating(critic.answer(judge(prompt=prompt, response="Pear, Plum.", critique=good))) == 2.0
    assert parse_rating(critic.answer(judge(prompt=prompt, response="pear, plum.", critique="Nice."))) == 5.0
    flipped = ScriptedCritic(flip_rate=1.0).answer(CRITIQUE_TEMPLATE.format(prompt=prompt, response="pear, plum."))
    assert flipped == VERDICTS["lowercase"][1] + "\nScore: 1/10"
    silent = ScriptedCritic(unparseable_rate=1.0).answer(CRITIQUE_TEMPLATE.format(prompt=prompt, response="pear."))
    assert silent == VERDICTS["lowercase"][0]
    with pytest.raises(ValueError, match="matches none"):
        critic.answer("hello")
    with pytest.raises(ValueError, match="flip_rate"):
        ScriptedCritic(flip_rate=1.5)


def test_scripted_critiques_are_short() -> None:
    from core.backbones import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    for sentence in (s for pair_ in VERDICTS.values() for s in pair_):
        assert len(tok(sentence + "\nScore: 10/10", add_special_tokens=False)["input_ids"]) < 40


def synthetic_pairs(n: int, seed: int) -> list[CritiquePair]:
    return [pair(i, r["chosen"], r["rejected"], r["prompt"], constraint=r["constraint"])
            for i, r in enumerate(make_pairs(n, seed))]


def test_scripted_filter_separates_kept_scores() -> None:
    pairs = synthetic_pairs(200, seed=3)
    critic = ScriptedCritic(seed=0, flip_rate=0.3, unparseable_rate=0.1)
    records = critique_pairs(pairs, critic, CritiqueConfig(n=4, refine="none"))
    tally = StatsTally()
    kept = [r for r in records if tally(r)]
    stats = tally.summary(len(pairs), CritiqueConfig(n=4, refine="none"))
    assert stats["pairs_dropped"] == {"inconsistent": 56, "no_parsed_critique": 0, "generation_failed": 0}
    assert (stats["critiques_unparseable"], stats["critiques_dropped_by_filter"], stats["critiques_kept"]) == (
        137, 238, 814)
    assert len(kept) == stats["pairs_kept"] == 144
    for r in kept:
        assert min(r["chosen_critique_scores"]) > max(r["rejected_critique_scores"])
        followed, broken = VERDICTS[r["constraint"]]
        assert all(c.startswith(followed + "\n") for c in r["chosen_critique"])  # flipped verdicts are gone
        assert all(c.startswith(broken + "\n") for c in r["rejected_critique"])


# ------------------------------------------------------------------------------------------------ CLI


def write_synthetic(path: Path, n: int = 10, seed: int = 5) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(n, seed)), encoding="utf-8")
    return path


def cli(src: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--pairs", str(src), "--out", str(out), "--backend", "scripted", "--n", "4",
                 "--refine", "summ", "--flip-rate", "0.3", "--unparseable-rate", "0.1", "--chunk-size", "4", *extra])


def test_cli_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src = write_synthetic(tmp_path / "pairs.jsonl")
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    whole = tmp_path / "whole.jsonl"
    assert cli(src, whole) == 0
    assert '"pairs_in": 10' in capsys.readouterr().out
    out_rows = [json.loads(line) for line in whole.read_text().splitlines()]
    stats = json.loads(stats_path(whole).read_text())
    assert stats == {
        "pairs_in": 10, "pairs_kept": 9,
        "pairs_dropped": {"inconsistent": 1, "no_parsed_critique": 0, "generation_failed": 0},
        "critiques_generated": 80, "critiques_parsed": 69, "critiques_unparseable": 11,
        "critiques_dropped_by_filter": 14, "critiques_kept": 48,
        "summaries_fallback": 2, "summaries_inconsistent": 0, "judge_ratings_unparseable": 0, "refine": "summ",
        "n": 4,
    }
    assert len(out_rows) == stats["pairs_kept"]
    dropped = [json.loads(line) for line in dropped_path(whole).read_text().splitlines()]
    assert [d["critique_dropped"] for d in dropped] == ["inconsistent"]
    assert len(dropped[0]["candidates"]["chosen"]) == 4 and dropped[0]["pair"] in rows
    sides = [r["critique_meta"][side] for r in out_rows for side in ("chosen", "rejected")]
    assert sum(s["kept"] for s in sides) == 48 and sum(s["summary_fallback"] for s in sides) == 2
    assert sum(s["parsed"] - s["kept"] for s in sides) == 14
    assert sum(stats["pairs_dropped"].values()) + stats["pairs_kept"] == stats["pairs_in"]
    by_prompt = {(r["prompt"], r["chosen"]): r for r in rows}
    for r in out_rows:
        source = by_prompt[(r["prompt"], r["chosen"])]
        assert {k: r[k] for k in source} == source  # every input field, unchanged
        assert isinstance(r["chosen_critique"], str) and isinstance(r["rejected_critique"], str)
        assert r["chosen_critique_scores"] == parse_score(r["chosen_critique"])
        assert r["chosen_critique_scores"] > r["rejected_critique_scores"]
        assert set(r["critique_meta"]) == {"refine", "n", "chosen", "rejected"}
    assert not parts_dir(whole).exists() and not (tmp_path / "whole.jsonl.failures.jsonl").exists()

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
        cli(src, out)
    assert not out.exists() and not stats_path(out).exists()
    assert len(list(parts_dir(out).glob("part*.jsonl"))) == 1
    monkeypatch.setattr(resumable_module, "_write_part", real)
    capsys.readouterr()
    assert cli(src, out, "--n", "3") == 2  # other settings: refused
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other prompts or settings" in err and len(err.splitlines()) == 1
    assert cli(src, out) == 0
    assert "1 kept from an earlier run" in capsys.readouterr().out
    assert out.read_bytes() == whole.read_bytes()
    assert stats_path(out).read_text() == stats_path(whole).read_text()
    assert not parts_dir(out).exists()


def test_cli_user_errors(tmp_path: Path, capsys) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "p", "chosen": "a"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli(src, out) == 2
    err = capsys.readouterr().err
    assert err == f"error: {src}:2: missing field 'rejected' (expected a string or a list of chat messages)\n"
    assert list(tmp_path.iterdir()) == [src]  # nothing written
    good = write_synthetic(tmp_path / "good.jsonl", n=2)
    bad_template = tmp_path / "t.txt"
    bad_template.write_text("{prompt} only", encoding="utf-8")
    assert cli(good, out, "--critique-template", str(bad_template)) == 2
    assert "missing field {response}" in capsys.readouterr().err
    assert main(["generate", "--pairs", str(good), "--out", str(out), "--backend", "hf", "--flip-rate", "0.1"]) == 2
    assert "only to --backend scripted" in capsys.readouterr().err
    assert cli(good, out, "--top-k", "0") == 2 and "top_k" in capsys.readouterr().err
    assert not out.exists() and not parts_dir(out).exists()


def test_read_pairs_formats_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    src.write_text(json.dumps({"prompt": messages, "chosen": [{"role": "assistant", "content": "Hello."}],
                               "rejected": "Go away.", "id": 7}) + "\n", encoding="utf-8")
    [p] = read_pairs(src)
    assert p.prompt == "System: Be brief.\n\nUser: Hi?" and p.chosen == "Hello." and p.rejected == "Go away."
    assert p.where == f"{src}:1" and p.row["id"] == 7 and p.row["prompt"] == messages
    for row, message in (
        ({"prompt": "p", "chosen": " ", "rejected": "r"}, "field 'chosen' is empty"),
        ({"prompt": "p", "chosen": "c", "rejected": 3}, "field 'rejected' must be"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "error": "x"}, "field 'error' is reserved"),
    ):
        src.write_text("\n" + json.dumps(row) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=f"{src}:2: {message}"):
            read_pairs(src)
    src.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no pairs"):
        read_pairs(src)


def test_hf_backend_runs(tmp_path: Path) -> None:
    from core.generation import HFGenerator

    gen = HFGenerator("tiny-llama", batch_size=4, seed=0)
    pairs = synthetic_pairs(2, seed=0)
    report = write_critiques(pairs, tmp_path / "out.jsonl", gen, CritiqueConfig(n=2, refine="none",
                                                                                 max_new_tokens=16))
    stats = report.stats
    assert stats["pairs_in"] == 2 and stats["critiques_generated"] == 8
    assert stats["critiques_parsed"] + stats["critiques_unparseable"] == 8
    assert stats["pairs_kept"] + sum(stats["pairs_dropped"].values()) == 2
    assert stats["pairs_dropped"]["generation_failed"] == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == stats["pairs_kept"]
    assert json.loads(report.stats_path.read_text()) == stats
