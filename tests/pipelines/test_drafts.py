"""The scripted draft writer as an oracle: a constraint passes the strict verifier iff the draft says it followed it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pipelines.instruction_following.constraints import CONFLICTS
from pipelines.instruction_following.drafts import DRAFTABLE, Draft, draft_for_record, draft_response
from pipelines.instruction_following.scoring import score
from pipelines.instruction_following.synth import synthesize

SEEDS = (0, 1)
N = 2000


@pytest.fixture(scope="module")
def prompts() -> dict[int, list[dict[str, Any]]]:
    return {seed: synthesize(N, seed, 1, 3, include=DRAFTABLE) for seed in SEEDS}


def constraints_of(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(zip(record["instruction_id_list"], record["kwargs"], strict=True))


def verdicts(records: list[dict[str, Any]], seed: int, p_follow: float) -> list[tuple[str, bool, bool]]:
    """``(constraint id, in draft.followed, passes the strict verifier)`` for every constraint of every prompt."""
    rng = random.Random(seed)
    out = []
    for record in records:
        draft = draft_for_record(record, rng, p_follow)
        assert isinstance(draft, Draft) and isinstance(draft, str)
        assert draft.followed <= set(record["instruction_id_list"])
        flags = score(draft, constraints_of(record)).per_constraint
        out += [(cid, cid in draft.followed, ok) for cid, ok in zip(record["instruction_id_list"], flags, strict=True)]
    return out


def test_the_sample_covers_every_draftable_type(prompts) -> None:
    for records in prompts.values():
        assert len(records) == N
        seen = {cid for r in records for cid in r["instruction_id_list"]}
        assert seen == set(DRAFTABLE)
        assert {len(r["instruction_id_list"]) for r in records} == {1, 2, 3}


@pytest.mark.parametrize("seed", SEEDS)
def test_followed_iff_the_strict_verifier_passes(prompts, seed: int) -> None:
    results = verdicts(prompts[seed], seed, 0.5)
    wrong = [(cid, followed, ok) for cid, followed, ok in results if followed != ok]
    assert wrong == []
    fraction = sum(followed for _, followed, _ in results) / len(results)
    assert 0.45 <= fraction <= 0.55
    for cid in DRAFTABLE:  # each type is both followed and skipped in the sample, so the iff is tested both ways
        assert {followed for c, followed, _ in results if c == cid} == {True, False}, cid


def test_p_follow_one_passes_everything_and_zero_nothing(prompts) -> None:
    always = verdicts(prompts[0], 0, 1.0)
    assert all(followed and ok for _, followed, ok in always)
    never = verdicts(prompts[0], 0, 0.0)
    assert not any(followed or ok for _, followed, ok in never)
    assert len(always) == len(never) == sum(len(r["instruction_id_list"]) for r in prompts[0])


def test_deterministic_given_the_rng_seed(prompts) -> None:
    records = prompts[0][:200]

    def drafts(seed: int) -> list[tuple[str, frozenset[str]]]:
        rng = random.Random(seed)
        return [(str(d), d.followed) for d in (draft_for_record(r, rng, 0.5) for r in records)]

    first = drafts(7)
    assert first == drafts(7)
    other = drafts(8)
    assert other != first and sum(a != b for a, b in zip(first, other, strict=True)) > 100


def test_a_draft_with_every_feature() -> None:
    constraints = [("detectable_format:title", {}), ("detectable_content:postscript", {"postscript_marker": "P.S."}),
                   ("startend:end_checker", {"end_phrase": "Any other questions?"}), ("punctuation:no_comma", {}),
                   ("change_case:english_lowercase", {}), ("startend:quotation", {})]
    draft = draft_response("home gardening", constraints, random.Random(0), p_follow=1.0)
    assert draft.followed == frozenset(cid for cid, _ in constraints)
    assert draft.startswith('"<<home gardening>>\n') and draft.endswith(' any other questions?"')
    assert "\np.s. " in draft and "," not in draft and draft == draft.lower()
    assert score(draft, constraints).per_constraint == [True] * 6
    # Without a topic the record's draft is titled for "this topic", capitalised.
    record = {"instruction_id_list": ["detectable_format:title"], "kwargs": [{}]}
    assert draft_for_record(record, random.Random(0), 1.0).startswith("<<This topic>>\n")


def test_nothing_followed_leaves_the_stock_text() -> None:
    constraints = [(cid, {"postscript_marker": "P.P.S"} if "postscript" in cid else
                    {"end_phrase": "That is all for now."} if "end_checker" in cid else {}) for cid in DRAFTABLE]
    for seed in range(20):
        draft = draft_response("chess", constraints, random.Random(seed), p_follow=0.0)
        assert draft.followed == frozenset()
        assert "," in draft and draft[0].isupper() and "<<" not in draft and "\n" not in draft
        # Both case constraints are listed here (they conflict), so score each type alone.
        assert not any(score(draft, [c]).all_pass for c in constraints)


def test_conflicting_case_constraints_are_recorded_honestly() -> None:
    assert "change_case:english_lowercase" in CONFLICTS["change_case:english_capital"]  # synth never pairs them
    both = [("change_case:english_capital", {}), ("change_case:english_lowercase", {})]
    draft = draft_response("chess", both, random.Random(0), p_follow=1.0)
    assert draft.followed == frozenset({"change_case:english_capital"}) and draft == draft.upper()
    assert score(draft, both).per_constraint == [True, False]


@pytest.mark.parametrize("cid", ["keywords:existence", "length_constraints:number_words"])
def test_non_draftable_type_raises_naming_it(cid: str) -> None:
    with pytest.raises(ValueError, match=f"cannot follow '{cid}'"):
        draft_response("chess", [("punctuation:no_comma", {}), (cid, {})], random.Random(0))
    record = {"topic": "chess", "instruction_id_list": [cid], "kwargs": [{}]}
    with pytest.raises(ValueError, match=cid):
        draft_for_record(record, random.Random(0))
