"""Prompt synthesis for instruction-following preference data (Kim et al. 2025, NAACL; constraints from IFEval):
the shipped base tasks, determinism, uniqueness, conflict rules, complexity, phrasings, the IFEval reader, the CLI
and resumption after a kill."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from core.errors import DataError
from pipelines.instruction_following import synth as synth_module
from pipelines.instruction_following.__main__ import main
from pipelines.instruction_following.constraints import CONFLICTS, CONSTRAINT_TYPES, ConstraintError, constraint
from pipelines.instruction_following.scoring import read_ifeval_inputs
from pipelines.instruction_following.synth import REPEAT_PROMPT, iter_prompts, parts_dir, synthesize, write_prompts
from pipelines.instruction_following.tasks import BASE_TASKS, KINDS, TEMPLATES, TOPICS

RECORD_FIELDS = ["key", "prompt", "instruction_id_list", "kwargs", "complexity", "task", "topic", "template"]


@pytest.fixture(scope="module")
def prompts5k() -> list[dict[str, Any]]:
    return synthesize(5000, 0)


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


# ------------------------------------------------------------------------------------------------ tasks


def test_shipped_tasks_are_templates_times_topics() -> None:
    assert len(TEMPLATES) >= 40
    assert len(TOPICS) >= 150
    assert len(BASE_TASKS) >= 500
    assert len({t.id for t in TEMPLATES}) == len(TEMPLATES)
    assert len({t.name for t in TOPICS}) == len(TOPICS)
    assert len({b.text for b in BASE_TASKS}) == len(BASE_TASKS)
    assert {t.kind for t in TOPICS} == set(KINDS)
    for template in TEMPLATES:
        assert template.text.count("{topic}") == 1
        assert any(b.template == template.id for b in BASE_TASKS)
    for topic in TOPICS:
        assert any(b.topic == topic.name for b in BASE_TASKS)
        assert len(topic.words) >= 3
        name_words = set(topic.name.lower().split())
        for word in topic.words:  # usable as keywords: single alphabetic lower-case words, not the topic's name
            assert word.isalpha() and word.islower() and len(word) >= 3, (topic.name, word)
            assert word not in name_words, (topic.name, word)
    for task in BASE_TASKS:
        assert task.text[0].isupper() and task.text[-1] in ".?!" and "{" not in task.text


# ------------------------------------------------------------------------------------------------ synthesis


def test_deterministic_by_seed_and_prefix_stable() -> None:
    first = synthesize(300, 7)
    assert first == synthesize(300, 7)
    assert first != synthesize(300, 8)
    assert synthesize(120, 7) == first[:120]
    stream = iter_prompts(7)
    assert [next(stream) for _ in range(50)] == first[:50]


def test_records_have_ifeval_fields_plus_extras(prompts5k: list[dict[str, Any]]) -> None:
    for i, record in enumerate(prompts5k[:200]):
        assert list(record) == RECORD_FIELDS
        assert record["key"] == i
        assert record["complexity"] == len(record["instruction_id_list"]) == len(record["kwargs"])
        assert record["prompt"].startswith(record["task"] + " ")
        assert record["topic"] in record["task"]


def test_prompts_are_unique(prompts5k: list[dict[str, Any]]) -> None:
    assert len({r["prompt"] for r in prompts5k}) == 5000
    assert [r["key"] for r in prompts5k] == list(range(5000))
    plain = [r for r in prompts5k if REPEAT_PROMPT not in r["instruction_id_list"]]
    sets = {
        (r["task"], tuple(sorted(json.dumps(pair) for pair in zip(r["instruction_id_list"], r["kwargs"], strict=True))))
        for r in plain
    }
    assert len(sets) == len(plain)  # no two prompts share task and constraint set, whatever the order or phrasing


def test_conflict_rules_hold_over_many_seeds() -> None:
    seen_ids: set[str] = set()
    for seed in range(30):
        for record in synthesize(100, seed, max_constraints=6):
            ids = record["instruction_id_list"]
            seen_ids.update(ids)
            assert len(set(ids)) == len(ids), ids  # every type conflicts with itself: no duplicates
            for a, b in combinations(ids, 2):
                assert b not in CONFLICTS[a], (a, b)
            assert 1 <= record["complexity"] <= 6
    assert seen_ids == set(CONSTRAINT_TYPES)  # all 25 types are drawn by default


def test_complexity_covers_one_to_k(prompts5k: list[dict[str, Any]]) -> None:
    counts = Counter(r["complexity"] for r in prompts5k)
    assert set(counts) == {1, 2, 3, 4}
    assert all(0.2 < c / 5000 < 0.3 for c in counts.values()), counts  # uniform by default
    narrow = Counter(r["complexity"] for r in synthesize(400, 1, min_constraints=2, max_constraints=3))
    assert set(narrow) == {2, 3}
    weighted = Counter(r["complexity"] for r in synthesize(200, 1, 1, 3, complexity_weights=[0, 0, 1]))
    assert weighted == {3: 200}
    wide = Counter(r["complexity"] for r in synthesize(400, 2, max_constraints=8))
    assert set(wide) == set(range(1, 9))


def test_kwargs_validate_and_each_phrasing_is_in_the_prompt(prompts5k: list[dict[str, Any]]) -> None:
    for record in prompts5k:
        prompt = record["prompt"]
        for cid, kwargs in zip(record["instruction_id_list"], record["kwargs"], strict=True):
            bound = constraint(cid, kwargs)  # validates (ConstraintError otherwise)
            assert bound.kwargs == kwargs
            ctype = CONSTRAINT_TYPES[cid]
            values = ctype.render_values(kwargs)
            assert any(p.format(**values) in prompt for p in ctype.phrasings), (cid, prompt)


def test_repeat_prompt_comes_last_and_repeats_the_text_before_it(prompts5k: list[dict[str, Any]]) -> None:
    repeats = [r for r in prompts5k if REPEAT_PROMPT in r["instruction_id_list"]]
    assert repeats
    for record in repeats:
        assert record["instruction_id_list"][-1] == REPEAT_PROMPT
        before = record["kwargs"][-1]["prompt_to_repeat"]
        assert record["prompt"].startswith(before + " ")
        assert before.startswith(record["task"])
        assert constraint(REPEAT_PROMPT, {"prompt_to_repeat": before}).check(before + "\n\nHere is my answer.")


def test_keywords_come_from_the_topic(prompts5k: list[dict[str, Any]]) -> None:
    words = {t.name: set(t.words) for t in TOPICS}
    topical = total = 0
    for record in prompts5k:
        for cid, kwargs in zip(record["instruction_id_list"], record["kwargs"], strict=True):
            if cid == "keywords:existence":
                total += 1
                topical += set(kwargs["keywords"]) <= words[record["topic"]]
    assert total and topical / total > 0.9


def test_unsatisfiable_combinations_are_filtered() -> None:
    sat = synth_module._satisfiable

    def bind(*pairs: tuple[str, dict[str, Any]]) -> list[Any]:
        return [constraint(cid, kw) for cid, kw in pairs]

    no_comma = ("punctuation:no_comma", {})
    assert not sat(bind(no_comma, (REPEAT_PROMPT, {"prompt_to_repeat": "Write a poem. Use keywords a, b."})))
    assert sat(bind(no_comma, (REPEAT_PROMPT, {"prompt_to_repeat": "Write a poem. Do not use any commas."})))
    end = ("startend:end_checker", {"end_phrase": "Any other questions?"})
    assert not sat(bind(end, ("keywords:forbidden_words", {"forbidden_words": ["questions"]})))
    assert sat(bind(end, ("keywords:forbidden_words", {"forbidden_words": ["resume"]})))
    assert not sat(bind(end, ("keywords:frequency", {"keyword": "other", "frequency": 1, "relation": "less than"})))
    sections = ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 3})
    upper_sections = ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 3})
    assert not sat(bind(("change_case:english_capital", {}), sections))
    assert sat(bind(("change_case:english_capital", {}), upper_sections))
    few_capitals = {"capital_frequency": 3, "capital_relation": "less than"}
    assert not sat(bind(("change_case:capital_word_frequency", few_capitals), upper_sections))
    assert sat(bind(("change_case:capital_word_frequency", few_capitals), sections))
    letter = {"letter": "q", "let_frequency": 1, "let_relation": "less than"}
    assert not sat(bind(("keywords:letter_frequency", letter), end))
    assert not sat(bind(("length_constraints:number_sentences", {"num_sentences": 1, "relation": "less than"})))
    assert sat(bind(("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"})))


def test_every_synthesized_prompt_passes_the_filter(prompts5k: list[dict[str, Any]]) -> None:
    for record in prompts5k[:2000]:
        bound = [constraint(c, k) for c, k in zip(record["instruction_id_list"], record["kwargs"], strict=True)]
        assert synth_module._satisfiable(bound), record["prompt"]


def test_exclude_and_option_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    excluded = ["language:response_language", REPEAT_PROMPT]
    for record in synthesize(500, 0, exclude=excluded):
        assert not set(excluded) & set(record["instruction_id_list"])
    with pytest.raises(ConstraintError, match="nope"):
        synthesize(1, 0, exclude=["nope"])
    with pytest.raises(ValueError, match="min_constraints"):
        synthesize(1, 0, min_constraints=3, max_constraints=2)
    with pytest.raises(ValueError, match="min_constraints"):
        synthesize(1, 0, min_constraints=0)
    with pytest.raises(ValueError, match="one weight per complexity"):
        synthesize(1, 0, complexity_weights=[1, 1])
    with pytest.raises(ValueError, match="every constraint type"):
        synthesize(1, 0, exclude=list(CONSTRAINT_TYPES))
    only_title = [cid for cid in CONSTRAINT_TYPES if cid != "detectable_format:title"]
    with pytest.raises(ValueError, match="compatible"):
        synthesize(1, 0, min_constraints=2, max_constraints=2, exclude=only_title)
    monkeypatch.setattr(synth_module, "_MAX_DUPLICATES", 50)
    with pytest.raises(ValueError, match=r"only 1 unique prompt\(s\)"):  # one task x one type (phrasings aside)
        synthesize(10, 0, max_constraints=1, exclude=only_title, tasks=BASE_TASKS[:1])


def test_include_restricts_the_types(tmp_path: Path) -> None:
    chosen = ["punctuation:no_comma", "startend:end_checker", "change_case:english_lowercase"]
    records = synthesize(300, 0, 1, 3, include=chosen)
    used = Counter(cid for r in records for cid in r["instruction_id_list"])
    assert set(used) == set(chosen)  # every included type is drawn, nothing else
    assert all(chosen[0] not in r["instruction_id_list"] for r in synthesize(100, 0, 1, 2, include=chosen,
                                                                             exclude=[chosen[0]]))
    with pytest.raises(ConstraintError, match="nope"):
        synthesize(1, 0, include=["nope"])
    out = tmp_path / "p.jsonl"
    args = ["synth", "--n", "50", "--out", str(out), "--max-constraints", "2", "--types", ",".join(chosen[:2])]
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {cid for r in lines for cid in r["instruction_id_list"]} == set(chosen[:2])


# ------------------------------------------------------------------------------------------------ files and CLI


def test_written_file_reads_back_with_the_ifeval_reader(tmp_path: Path) -> None:
    out = tmp_path / "prompts.jsonl"
    report = write_prompts(out, 700, 5, chunk_size=256)
    assert (report.parts, report.parts_written, report.parts_kept) == (3, 3, 0)
    assert sum(report.complexity.values()) == 700
    expected = synthesize(700, 5)
    assert out.read_bytes() == _jsonl(expected)
    inputs = read_ifeval_inputs(out)
    assert [i.key for i in inputs] == list(range(700))
    for inp, record in zip(inputs, expected, strict=True):
        assert (inp.prompt, inp.instruction_id_list, inp.kwargs) == (
            record["prompt"],
            record["instruction_id_list"],
            record["kwargs"],
        )
    assert not parts_dir(out).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.jsonl"]


def test_cli_synth_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "prompts.jsonl"
    argv = ["synth", "--n", "600", "--seed", "3", "--out", str(out), "--max-constraints", "5", "--chunk-size", "250"]
    assert main(argv + ["--min-constraints", "2", "--exclude", "language:response_language"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 600 unique prompts" in printed and " s (3 parts" in printed
    expected = synthesize(600, 3, 2, 5, exclude=["language:response_language"])
    assert out.read_bytes() == _jsonl(expected)
    assert {r["complexity"] for r in expected} == {2, 3, 4, 5}


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def test_cli_resumes_after_a_kill_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--n", "1000", "--seed", "11", "--chunk-size", "150"]  # 7 parts
    reference = tmp_path / "reference.jsonl"
    assert main(["synth", *args, "--out", str(reference)]) == 0

    out = tmp_path / "killed" / "prompts.jsonl"
    real_write = synth_module._write_part
    writes: list[str] = []

    def dying_write(path: Path, text: str) -> None:
        if len(writes) == 3:
            raise _Killed
        real_write(path, text)
        writes.append(path.name)

    monkeypatch.setattr(synth_module, "_write_part", dying_write)
    with pytest.raises(_Killed):
        main(["synth", *args, "--out", str(out)])
    assert not out.exists()
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["part00000.jsonl", "part00001.jsonl", "part00002.jsonl"]

    writes.clear()
    monkeypatch.setattr(
        synth_module, "_write_part", lambda path, text: (writes.append(path.name), real_write(path, text))
    )
    capsys.readouterr()
    assert main(["synth", *args, "--out", str(out)]) == 0
    assert writes == [f"part{i:05d}.jsonl" for i in range(3, 7)]  # the three finished parts are kept
    assert "4 written, 3 kept" in capsys.readouterr().out
    assert out.read_bytes() == reference.read_bytes()
    assert not parts_dir(out).exists()
    lines = out.read_text().splitlines()
    assert len(lines) == len({json.loads(line)["prompt"] for line in lines}) == 1000


def test_stale_or_damaged_parts_are_rewritten(tmp_path: Path) -> None:
    out = tmp_path / "prompts.jsonl"
    write_prompts(out, 500, 1, chunk_size=200)
    expected = out.read_bytes()
    folder = parts_dir(out)
    folder.mkdir()
    (folder / "part00000.jsonl").write_text(_jsonl(synthesize(200, 2)).decode())  # another seed's part
    (folder / "part00001.jsonl").write_text('{"key": 200, "prom')  # torn by hand (atomic writes never leave this)
    (folder / "part00007.jsonl").write_text("left over from a longer run\n")
    (tmp_path / ".prompts.jsonl.0123abcd.tmp").write_text("killed while assembling")
    out.unlink()
    report = write_prompts(out, 500, 1, chunk_size=200)
    assert (report.parts_written, report.parts_kept) == (3, 0)
    assert out.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "p.jsonl")
    assert main(["synth", "--out", out, "--min-constraints", "3", "--max-constraints", "2"]) == 2
    assert main(["synth", "--out", out, "--exclude", "keywords:nope"]) == 2
    assert main(["synth", "--out", str(tmp_path), "--n", "5"]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["synth", "--out", out, "--bogus"])
    with pytest.raises(DataError):
        write_prompts(tmp_path, 5, 0)
    assert not (tmp_path / "p.jsonl").exists()


def test_cli_score_passes_through_to_scoring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    assert (
        main(["synth", "--n", "40", "--seed", "0", "--out", str(prompts), "--exclude", "language:response_language"])
        == 0
    )
    responses = tmp_path / "responses.jsonl"
    lines = [json.dumps({"prompt": r.prompt, "response": "A plain answer."}) for r in read_ifeval_inputs(prompts)]
    responses.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["score", "--input", str(prompts), "--responses", str(responses)]) == 0
    printed = capsys.readouterr().out
    assert "prompt-level strict accuracy" in printed and "(40 prompts" in printed
    with pytest.raises(SystemExit) as exc:
        main(["score", "-h"])
    assert exc.value.code == 0
    assert "--responses" in capsys.readouterr().out
