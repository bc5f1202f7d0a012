"""Verifiable constraints (IFEval, Zhou et al. 2023): registry, verifiers and their edge cases, phrasings,
samplers, conflicts, errors, and the text helpers (sentence / word / paragraph splitting)."""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest

from core.errors import MissingExtraError
from pipelines.instruction_following import text
from pipelines.instruction_following.constraints import (
    CONFLICTS,
    CONSTRAINT_TYPES,
    LANGUAGE_NAMES,
    ConstraintError,
    SampleContext,
    are_compatible,
    constraint,
    get_constraint_type,
    sample_constraints,
)

IFEVAL_IDS = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "startend:quotation",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
]

try:
    import langdetect  # type: ignore[import-not-found]  # noqa: F401

    HAS_LANGDETECT = True
except ImportError:
    HAS_LANGDETECT = False

CONTEXT = SampleContext(prompt="Write a short story about a lighthouse keeper.", topic_words=("lighthouse", "keeper"))

# (id, kwargs, response, expected strict verdict)
CASES: list[tuple[str, dict[str, Any], str, bool]] = [
    # keywords: case-insensitive substrings; forbidden words are whole words
    ("keywords:existence", {"keywords": ["river", "Moon"]}, "The moon rose over the River.", True),
    ("keywords:existence", {"keywords": ["river", "moon"]}, "The moon rose.", False),
    ("keywords:existence", {"keywords": ["art"]}, "Let us start.", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "Cat and cat.", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "One cat.", False),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "One cat.", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "cat CAT", False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A category of dogs.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["dog", "cat"]}, "My Cat sleeps.", False),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "at least"}, "A banana", True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 1, "let_relation": "less than"}, "Zoo", False),
    ("keywords:letter_frequency", {"letter": "!", "let_frequency": 2, "let_relation": "at least"}, "Hi! Yes!", True),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "at least"}, "#one two", False),
    # sentences and words
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "One. Two! Three?", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two! Three?", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Mr. Li paid 3.50.", True),
    ("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, "don't stop now", True),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "one two three four", False),
    # paragraphs split on *** (empty first/last chunk ignored, empty middle chunk fails)
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nFirst.\n***\nSecond.\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\n***\nSecond.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "First.\n***\nSecond.", False),
    # nth paragraph split on blank lines; first word lower-cased and cut at punctuation
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        'It began.\n\n"Then, it ended."',
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "It began.\n\nAfter that it ended.",
        False,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "it"},
        "It began.\n\nMore.\n\nEven more.",
        False,
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False),
    # postscript: IFEval's patterns, case-insensitive, P.P.S distinct from P.S.
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\n\nP.S. See you.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\n\np. s. see you.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\n\nPS see you.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\n\nP.P.S. One more.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\n\np. p. s one more.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\n\nP.S. One more.", False),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Bye.\nNOTE: later.", True),
    # bullets: exact count of "*" (not "**") and "-" lines
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "List:\n* a\n* b\n- c", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "List:\n* a\n* b\n- c", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**Bold** intro\n  * a\n  * b", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 4}, "* a\n* b\n* c", False),
    ("detectable_format:constrained_response", {}, "Hmm. My answer is maybe.", True),
    ("detectable_format:constrained_response", {}, "My answer is yes", False),
    # highlights: non-empty *x* spans plus **x** spans
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and ** **", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "**bold** text", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "*not\nclosed*", False),
    # sections: "<splitter> <number>", at least N, case-sensitive
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        True,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        False,
    ),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 3}, "Section 1 x", False),
    # JSON, possibly inside ``` fences
    ("detectable_format:json_format", {}, '{"a": [1, 2]}', True),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '```\n["x"]\n```', True),
    ("detectable_format:json_format", {}, 'Here it is: {"a": 1}', False),
    ("detectable_format:json_format", {}, '{"a": 1,}', False),
    # title <<...>>: non-empty, on one line
    ("detectable_format:title", {}, "<<Ode to Joy>>\nLa la la.", True),
    ("detectable_format:title", {}, "<<   >> nothing", False),
    ("detectable_format:title", {}, "<<split\ntitle>>", False),
    # two responses separated by ******, different
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same answer.\n******\nSame answer.  ", False),
    ("combination:two_responses", {}, "One.\n******\n******\nTwo.", False),
    ("combination:two_responses", {}, "One.\n******\nTwo.\n******\nThree.", False),
    ("combination:two_responses", {}, "******\nOne.\n******\nTwo.\n******", True),
    # repeat prompt: case-insensitive prefix of the stripped response
    ("combination:repeat_prompt", {"prompt_to_repeat": "Tell me a joke."}, "  tell me a JOKE. Why did ...", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Tell me a joke."}, "Sure! Tell me a joke. Why", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "Any other questions?"\n', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("startend:quotation", {}, '  "All of it."  ', True),
    ("startend:quotation", {}, '"Not all" of it.', False),
    ("startend:quotation", {}, '"', False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "I SAID NO", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "I said", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "Hi 2023", True),
    ("change_case:english_capital", {}, "THIS IS ALL CAPITALS, 100%.", True),
    ("change_case:english_capital", {}, "THIS IS NOT all capitals.", False),
    ("change_case:english_lowercase", {}, "this is all lowercase, 100%.", True),
    ("change_case:english_lowercase", {}, "this is Not all lowercase.", False),
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "One, two.", False),
]


def test_registry_has_ifeval_ids() -> None:
    assert list(CONSTRAINT_TYPES) == IFEVAL_IDS
    for cid, ctype in CONSTRAINT_TYPES.items():
        assert ctype.id == cid


@pytest.mark.parametrize(("cid", "kwargs", "response", "expected"), CASES)
def test_verifier(cid: str, kwargs: dict[str, Any], response: str, expected: bool) -> None:
    assert get_constraint_type(cid).check(response, kwargs) is expected


def test_every_type_has_passing_and_failing_cases() -> None:
    verdicts: dict[str, set[bool]] = {}
    for cid, _, _, expected in CASES:
        verdicts.setdefault(cid, set()).add(expected)
    missing = [cid for cid in IFEVAL_IDS if cid != "language:response_language" and verdicts.get(cid) != {True, False}]
    assert not missing


@pytest.mark.parametrize("cid", IFEVAL_IDS)
def test_empty_response_follows_nothing(cid: str) -> None:
    ctype = CONSTRAINT_TYPES[cid]
    kwargs = ctype.sample(random.Random(0), CONTEXT)
    assert constraint(cid, kwargs).check("   \n ") is False


def test_response_language_without_langdetect_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.instruction_following import constraints as module

    monkeypatch.setattr(module, "_langdetect_state", {"module": None})  # as if the extra were not installed
    kwargs = {"language": "fr"}
    with pytest.raises(MissingExtraError, match="pip install langdetect"):
        constraint("language:response_language", kwargs).check("Bonjour tout le monde.")
    # sampling and describing work without the extra
    sampled = CONSTRAINT_TYPES["language:response_language"].sample(random.Random(1))
    assert sampled["language"] in LANGUAGE_NAMES
    assert LANGUAGE_NAMES["fr"] in CONSTRAINT_TYPES["language:response_language"].describe(kwargs)


@pytest.mark.skipif(not HAS_LANGDETECT, reason="the langdetect extra is not installed (it is in the dev extra)")
def test_response_language_with_langdetect() -> None:
    french = constraint("language:response_language", {"language": "fr"})
    assert french.check("Bonjour, je suis très content de vous voir aujourd'hui.") is True
    assert french.check("Hello, I am very happy to see you today, my dear friends.") is False


def test_language_checks_with_a_stand_in_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The language logic (IFEval: undetectable counts as followed) with a fake ``langdetect`` module."""
    import types

    from pipelines.instruction_following import constraints as module

    class LangDetectException(Exception):
        pass

    def detect(passage: str) -> str:
        if not any(ch.isalpha() for ch in passage):
            raise LangDetectException("no features")
        return "fr" if "bonjour" in passage.lower() else "en"

    fake = types.SimpleNamespace(
        detect=detect, LangDetectException=LangDetectException, DetectorFactory=types.SimpleNamespace(seed=None)
    )
    monkeypatch.setitem(sys.modules, "langdetect", fake)
    monkeypatch.setattr(module, "_langdetect_state", {})
    french = constraint("language:response_language", {"language": "fr"})
    assert french.check("Bonjour mes amis.") is True
    assert french.check("Hello my friends.") is False
    assert french.check("12345 !!!") is True  # undetectable
    assert fake.DetectorFactory.seed == 0  # seeded for deterministic results
    assert constraint("change_case:english_capital").check("HELLO THERE") is True
    assert constraint("change_case:english_capital").check("BONJOUR MES AMIS") is False
    assert constraint("change_case:english_lowercase").check("bonjour mes amis") is False


def _expected_mentions(cid: str, kwargs: dict[str, Any]) -> list[str]:
    ctype = CONSTRAINT_TYPES[cid]
    mentions: list[str] = []
    for spec in ctype.fields:
        if not spec.shown:
            continue
        value = kwargs[spec.name]
        if isinstance(value, list):
            mentions.extend(value)
        elif spec.kind == "language":
            mentions.append(LANGUAGE_NAMES[value])
        else:
            mentions.append(str(value))
    return mentions


@pytest.mark.parametrize("cid", IFEVAL_IDS)
def test_phrasings_mention_parameter_values(cid: str) -> None:
    ctype = CONSTRAINT_TYPES[cid]
    assert len(ctype.phrasings) >= 3
    assert len(set(ctype.phrasings)) == len(ctype.phrasings)
    rng = random.Random(7)
    for _ in range(5):
        kwargs = ctype.sample(rng, CONTEXT)
        for template in ctype.phrasings:
            rendered = template.format(**ctype.render_values(kwargs))
            for mention in _expected_mentions(cid, kwargs):
                assert mention in rendered, (template, mention)
        assert ctype.describe(kwargs, rng) in {t.format(**ctype.render_values(kwargs)) for t in ctype.phrasings}
    if cid == "detectable_format:constrained_response":
        assert "My answer is maybe." in ctype.describe({})


def test_describe_picks_different_phrasings() -> None:
    ctype = CONSTRAINT_TYPES["punctuation:no_comma"]
    rng = random.Random(0)
    assert {ctype.describe({}, rng) for _ in range(50)} == set(ctype.phrasings)


@pytest.mark.parametrize("cid", IFEVAL_IDS)
def test_sampled_kwargs_are_accepted_by_the_verifier(cid: str) -> None:
    ctype = CONSTRAINT_TYPES[cid]
    rng = random.Random(cid)
    responses = ["Hello there. This is a response.", "* a\n* b\n\nSECTION 1 <<T>> P.S. [x]", '{"k": "v"}']
    for seed in range(40):
        rng.seed(seed)
        kwargs = ctype.sample(rng, CONTEXT)
        assert ctype.validate(kwargs) == kwargs
        bound = constraint(cid, kwargs)
        for response in responses:
            if ctype.needs_langdetect and not HAS_LANGDETECT:
                with pytest.raises(MissingExtraError):
                    bound.check(response)
            else:
                assert isinstance(bound.check(response), bool)


def test_samplers_use_topic_words_and_avoid_collisions() -> None:
    ctx = SampleContext(prompt="p", topic_words=("lighthouse", "keeper", "storm", "the"))
    kwargs = CONSTRAINT_TYPES["keywords:existence"].sample(random.Random(3), ctx)
    assert set(kwargs["keywords"]) <= {"lighthouse", "keeper", "storm"}
    ids = ["keywords:existence", "keywords:forbidden_words", "keywords:frequency"]
    for seed in range(30):
        chosen = sample_constraints(random.Random(seed), 3, ctx, ids=ids)
        by_id = {c.id: c.kwargs for c in chosen}
        forbidden = set(by_id["keywords:forbidden_words"]["forbidden_words"])
        assert not set(by_id["keywords:existence"]["keywords"]) & forbidden
        assert by_id["keywords:frequency"]["keyword"] not in forbidden


def test_repeat_prompt_sampler_needs_the_prompt() -> None:
    ctype = CONSTRAINT_TYPES["combination:repeat_prompt"]
    assert ctype.sample(random.Random(0), {"prompt": "Say hi."}) == {"prompt_to_repeat": "Say hi."}
    with pytest.raises(ConstraintError, match="prompt_to_repeat"):
        ctype.sample(random.Random(0))


def test_conflicts_are_symmetric_and_reflexive() -> None:
    assert set(CONFLICTS) == set(IFEVAL_IDS)
    for cid, others in CONFLICTS.items():
        assert cid in others
        assert CONSTRAINT_TYPES[cid].conflicts == others
        for other in others:
            assert cid in CONFLICTS[other], (cid, other)


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        ("change_case:english_capital", "change_case:english_lowercase", True),
        ("detectable_format:json_format", "length_constraints:number_words", True),
        ("detectable_format:json_format", "keywords:existence", False),
        ("detectable_format:constrained_response", "punctuation:no_comma", True),
        ("combination:two_responses", "detectable_format:title", False),
        ("combination:two_responses", "startend:quotation", True),
        ("combination:repeat_prompt", "punctuation:no_comma", False),
        ("combination:repeat_prompt", "startend:end_checker", True),
        ("language:response_language", "keywords:existence", True),
        ("length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word", True),
        ("startend:quotation", "detectable_format:title", True),
        ("punctuation:no_comma", "detectable_format:title", False),
    ],
)
def test_conflict_table(a: str, b: str, conflict: bool) -> None:
    assert (b in CONFLICTS[a]) is conflict
    assert are_compatible([a, b]) is not conflict


def test_sample_constraints_compatible_sets() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        k = rng.randint(1, 4)
        chosen = sample_constraints(rng, k, CONTEXT)
        ids = [c.id for c in chosen]
        assert 1 <= len(ids) <= k
        assert are_compatible(ids)
        if "detectable_format:constrained_response" not in ids:
            assert len(ids) == k
    assert not are_compatible(["punctuation:no_comma", "punctuation:no_comma"])


def test_unknown_id_and_bad_kwargs_raise_constraint_error() -> None:
    with pytest.raises(ConstraintError, match="keywords:nope") as info:
        constraint("keywords:nope", {})
    assert isinstance(info.value, ValueError)
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("length_constraints:number_words", {"num_words": "ten", "relation": "at least"}, "num_words"),
        ("length_constraints:number_words", {"num_words": 10, "relation": "at most"}, "relation"),
        ("length_constraints:number_words", {"relation": "at least"}, "num_words"),
        ("length_constraints:number_words", {"num_words": True, "relation": "at least"}, "num_words"),
        ("length_constraints:number_words", {"num_words": 0, "relation": "at least"}, "num_words"),
        ("punctuation:no_comma", {"comma": 1}, "comma"),
        ("keywords:existence", {"keywords": "river"}, "keywords"),
        ("keywords:existence", {"keywords": []}, "keywords"),
        ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"}, "letter"),
        ("keywords:letter_frequency", {"letter": " ", "let_frequency": 2, "let_relation": "at least"}, "letter"),
        ("language:response_language", {"language": "xx"}, "language"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"},
            "nth_paragraph",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "two words"},
            "first_word",
        ),
    ]
    for cid, kwargs, field in bad:
        with pytest.raises(ConstraintError) as info:
            constraint(cid, kwargs)
        assert info.value.constraint_id == cid
        assert info.value.field == field
        assert cid in str(info.value) and field in str(info.value)


def test_null_kwargs_are_ignored() -> None:
    bound = constraint("punctuation:no_comma", {"num_words": None, "relation": None})
    assert bound.kwargs == {}
    bound = constraint("detectable_content:postscript", {"postscript_marker": " P.S. ", "num_words": None})
    assert bound.kwargs == {"postscript_marker": "P.S."}


# ----------------------------------------------------------------------------------------------- text helpers


@pytest.mark.parametrize(
    ("passage", "expected"),
    [
        ("Mr. Smith went home. He slept.", ["Mr. Smith went home.", "He slept."]),
        ("Fruit, e.g. apples, is good. Yes.", ["Fruit, e.g. apples, is good.", "Yes."]),
        ("Pi is about 3.14. It never ends.", ["Pi is about 3.14.", "It never ends."]),
        ("Wait... Then it rang. I think... maybe not.", ["Wait...", "Then it rang.", "I think... maybe not."]),
        ("Really?! Yes!!! Ok", ["Really?!", "Yes!!!", "Ok"]),
        ('He said "Hi." Then he left.', ['He said "Hi."', "Then he left."]),
        ("My answer is no. I am sure.", ["My answer is no.", "I am sure."]),
        ("We met at 5 p.m. and talked. Fine.", ["We met at 5 p.m. and talked.", "Fine."]),
        ("Apples, pears, etc. Then plums.", ["Apples, pears, etc.", "Then plums."]),
        ("J. K. Rowling wrote it. Visit example.com today.", ["J. K. Rowling wrote it.", "Visit example.com today."]),
        ("1. First item\n2. Second item.", ["1. First item\n2. Second item."]),
        ("lower case start. next one.", ["lower case start.", "next one."]),
        ("***\n...", []),
        ("", []),
    ],
)
def test_split_sentences(passage: str, expected: list[str]) -> None:
    assert text.split_sentences(passage) == expected
    assert text.count_sentences(passage) == len(expected)


def test_split_sentences_on_blank_lines() -> None:
    passage = "Heading\n\nBody text here. More."
    assert text.count_sentences(passage) == 2
    assert text.split_sentences(passage, split_on_blank_lines=True) == ["Heading", "Body text here.", "More."]


def test_word_counts() -> None:
    assert text.count_words("Don't stop: state-of-the-art, 3.14!") == 9  # \w+ runs, as IFEval
    assert text.count_words("Don't stop", apostrophes=True) == 2
    assert text.count_words("") == 0
    assert text.capital_word_count("I SAID DON'T, x-RAY NASA-ESA 2023") == 5


def test_paragraph_helpers() -> None:
    assert text.split_star_paragraphs("a *** b\n***\n***\nc") == ["a", "b", "", "c"]
    assert text.split_blank_line_paragraphs("a\n\nb\n\n\n\nc") == ["a", "b", "", "c"]
    assert text.paragraph_first_word('\'"Hello," she said') == "hello"
    assert text.paragraph_first_word("It's fine") == "it"
    assert text.paragraph_first_word("   ") == ""


def test_response_text_caches() -> None:
    view = text.ResponseText("  One. Two.  ")
    assert view.n_sentences == 2 and view.n_words == 2 and view.stripped == "One. Two." and view.lower.strip()
    assert view.n_sentences == 2
