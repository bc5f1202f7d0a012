"""Scoring (IFEval, Zhou et al. 2023): strict vs loose, response scores, the four accuracies on a hand-made set,
the IFEval input/response readers with located errors, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import DataError
from pipelines.instruction_following.constraints import constraint
from pipelines.instruction_following.scoring import (
    PromptResult,
    ScoreResult,
    evaluate,
    evaluate_files,
    ifeval_accuracy,
    loose_variants,
    main,
    read_ifeval_inputs,
    read_responses,
    score,
    score_strict_loose,
)


def test_loose_variants_are_ifevals_eight() -> None:
    variants = loose_variants("Sure:\n*a* b\nBye")
    assert variants == [
        "Sure:\n*a* b\nBye",
        "Sure:\na b\nBye",
        "*a* b\nBye",
        "Sure:\n*a* b",
        "*a* b",
        "a b\nBye",
        "Sure:\na b",
        "a b",
    ]
    assert loose_variants("one line")[2:5] == ["", "", ""]


@pytest.mark.parametrize(
    ("cid", "kwargs", "response"),
    [
        ("startend:quotation", None, 'Sure, here it is:\n"The whole answer."'),
        ("combination:repeat_prompt", {"prompt_to_repeat": "Name a fruit."}, "Okay!\nName a fruit. Apple."),
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\nCheers!"),
        ("detectable_format:json_format", None, 'Here you go:\n{"a": 1}\nHope it helps.'),
        ("punctuation:no_comma", None, "Hello, friend!\nNo commas below this line"),
        ("startend:end_checker", {"end_phrase": "The end."}, "Once upon a time. **The end.**"),
    ],
)
def test_loose_accepts_what_strict_rejects(cid: str, kwargs: dict[str, Any] | None, response: str) -> None:
    c = constraint(cid, kwargs)
    assert score(response, [c]).all_pass is False
    assert score(response, [c], loose=True).all_pass is True


def test_loose_still_rejects_real_failures() -> None:
    c = constraint("startend:quotation")
    response = 'Preamble\n"middle" not quoted\nTrailer'
    strict, loose = score_strict_loose(response, [c])
    assert (strict.all_pass, loose.all_pass) == (False, False)
    # a response that passes strictly passes loosely too
    strict, loose = score_strict_loose('"quoted"', [c])
    assert strict.all_pass and loose.all_pass


def test_score_fraction_and_all_pass() -> None:
    constraints = [
        ("punctuation:no_comma", None),
        ("startend:end_checker", {"end_phrase": "Bye."}),
        {"id": "detectable_format:title", "kwargs": {}},
    ]
    result = score("<<Title>>\nHello, world. Bye.", constraints)
    assert result == ScoreResult([False, True, True], pytest.approx(2 / 3), False)
    result = score("<<Title>>\nHello world. Bye.", constraints)
    assert result.per_constraint == [True, True, True] and result.score == 1.0 and result.all_pass


@pytest.mark.parametrize("response", ["", "   \n\t"])
def test_empty_response_scores_zero(response: str) -> None:
    constraints = [("punctuation:no_comma", None), ("keywords:forbidden_words", {"forbidden_words": ["x"]})]
    for loose in (False, True):
        result = score(response, constraints, loose=loose)
        assert result.per_constraint == [False, False] and result.score == 0.0 and not result.all_pass


def test_score_needs_constraints() -> None:
    with pytest.raises(ValueError, match="at least one constraint"):
        score("hi", [])


def test_ifeval_accuracy_hand_made() -> None:
    # strict: [T, F], [T], [F, F, T]; loose: [T, T], [T], [F, T, T]
    results = [
        (ScoreResult.from_flags([True, False]), ScoreResult.from_flags([True, True])),
        (ScoreResult.from_flags([True]), ScoreResult.from_flags([True])),
        (ScoreResult.from_flags([False, False, True]), ScoreResult.from_flags([False, True, True])),
    ]
    acc = ifeval_accuracy(results)
    assert acc.n_prompts == 3 and acc.n_instructions == 6
    assert acc.prompt_strict == pytest.approx(1 / 3)
    assert acc.prompt_loose == pytest.approx(2 / 3)
    assert acc.instruction_strict == pytest.approx(3 / 6)
    assert acc.instruction_loose == pytest.approx(5 / 6)
    with pytest.raises(ValueError):
        ifeval_accuracy([])


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


INPUTS = [
    {
        "key": 1,
        "prompt": "Write a note about a lost cat.",
        "instruction_id_list": ["punctuation:no_comma", "startend:end_checker"],
        "kwargs": [{"num_words": None}, {"end_phrase": "Thanks again.", "relation": None}],
    },
    {
        "key": 2,
        "prompt": "Describe the sea.",
        "instruction_id_list": ["startend:quotation"],
        "kwargs": [{}],
    },
    {
        "key": 3,
        "prompt": "List two fruits.",
        "instruction_id_list": ["detectable_format:number_bullet_lists", "change_case:english_lowercase"],
        "kwargs": [{"num_bullets": 2}, {}],
    },
]
RESPONSES = [
    # 1: no comma, ends with the phrase -> strict [T, T]
    {"prompt": "Write a note about a lost cat.", "response": "Our cat is lost. Thanks again."},
    # 2: preamble line -> strict [F], loose [T]
    {"prompt": "Describe the sea.", "response": 'Here is my description:\n"The sea is wide."'},
    # 3: two bullets but a capital letter -> strict [T, F]; loose drops the first line -> [T, T] (long enough
    # for langdetect, when installed, to call the lowercase part English, as IFEval's check also requires)
    {"prompt": "List two fruits.", "response": "Fruits:\n* the apple is a sweet fruit\n* the pear is a soft fruit"},
]


def test_evaluate_files_and_accuracies(tmp_path: Path) -> None:
    inputs = _write_jsonl(tmp_path / "input.jsonl", [INPUTS[0], "", INPUTS[1], INPUTS[2]])
    responses = _write_jsonl(tmp_path / "responses.jsonl", list(reversed(RESPONSES)))
    results = evaluate_files(inputs, responses)
    assert [r.key for r in results] == [1, 2, 3]
    assert [r.strict.per_constraint for r in results] == [[True, True], [False], [True, False]]
    assert [r.loose.per_constraint for r in results] == [[True, True], [True], [True, True]]
    acc = ifeval_accuracy(results)
    assert (acc.prompt_strict, acc.prompt_loose) == (pytest.approx(1 / 3), 1.0)
    assert (acc.instruction_strict, acc.instruction_loose) == (pytest.approx(3 / 5), 1.0)
    assert isinstance(results[0], PromptResult) and results[0].to_json()["follow_all_instructions_strict"] is True
    parsed = read_ifeval_inputs(inputs)
    assert parsed[0].kwargs == [{}, {"end_phrase": "Thanks again."}]
    assert parsed[1].where.endswith("input.jsonl:3")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"key": 9, "prompt": "x", ', "input.jsonl:2: malformed JSON"),
        ("[1, 2]", "input.jsonl:2: expected a JSON object"),
        (
            {"prompt": "x", "instruction_id_list": ["punctuation:no_comma", "keywords:nope"], "kwargs": [{}, {}]},
            "input.jsonl:2: field 'instruction_id_list[1]': unknown constraint id 'keywords:nope'",
        ),
        (
            {"prompt": "x", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 5}]},
            "input.jsonl:2: field 'kwargs[0].relation' (length_constraints:number_words): missing",
        ),
        (
            {
                "prompt": "x",
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"num_words": "many", "relation": "at least"}],
            },
            "input.jsonl:2: field 'kwargs[0].num_words' (length_constraints:number_words): expected an integer",
        ),
        (
            {"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"postscript_marker": "P.S."}]},
            "input.jsonl:2: field 'kwargs[0].postscript_marker' (punctuation:no_comma): unknown keyword argument",
        ),
        (
            {"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []},
            "input.jsonl:2: field 'kwargs': expected 1 entries",
        ),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, "input.jsonl:2: field 'prompt'"),
    ],
)
def test_reader_errors_name_line_and_field(tmp_path: Path, line: Any, expected: str) -> None:
    path = _write_jsonl(tmp_path / "input.jsonl", [INPUTS[0], line])
    with pytest.raises(DataError) as info:
        read_ifeval_inputs(path)
    assert expected in str(info.value)


def test_responses_reader_errors(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "responses.jsonl", [RESPONSES[0], {"prompt": "p"}])
    with pytest.raises(DataError, match=r"responses.jsonl:2: field 'response'"):
        read_responses(path)
    path = _write_jsonl(tmp_path / "responses.jsonl", [RESPONSES[0], {**RESPONSES[0], "response": "other"}])
    with pytest.raises(DataError, match=r"responses.jsonl:2: field 'prompt': same prompt as line 1"):
        read_responses(path)
    inputs = read_ifeval_inputs(_write_jsonl(tmp_path / "input.jsonl", INPUTS))
    with pytest.raises(DataError, match=r"no response for the prompt of .*input.jsonl:2 \(key 2\)"):
        evaluate(inputs, {RESPONSES[0]["prompt"]: RESPONSES[0]["response"]})


def test_cli_prints_accuracies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _write_jsonl(tmp_path / "input.jsonl", INPUTS)
    responses = _write_jsonl(tmp_path / "responses.jsonl", RESPONSES)
    assert main(["--input", str(inputs), "--responses", str(responses)]) == 0
    out = capsys.readouterr().out
    assert "prompt-level strict accuracy: 0.3333" in out
    assert "instruction-level strict accuracy: 0.6000" in out
    assert "prompt-level loose accuracy: 1.0000" in out
    assert "instruction-level loose accuracy: 1.0000" in out
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    assert main(["--input", str(bad), "--responses", str(responses)]) == 2
    assert "bad.jsonl:1: malformed JSON" in capsys.readouterr().err
