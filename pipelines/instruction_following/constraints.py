"""Verifiable constraints: the 25 instruction types of IFEval, each with a sampler, phrasings and a verifier.

Reference: Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models" (IFEval). The ids, the
keyword-argument names and the verifiers' semantics are IFEval's; the code, the phrasings, the word list and the
samplers' ranges are ours. Each :class:`ConstraintType` has

- ``id`` (``"keywords:existence"``, ...) and ``fields``, the keyword arguments it takes (IFEval's names);
- ``sample(rng, context)``: keyword arguments drawn at random (keywords come from the context's topic words when
  it has enough of them, see :class:`SampleContext`);
- ``describe(kwargs, rng)``: one of at least three natural-language phrasings, naming the parameter values;
- ``check(response, kwargs)``: the strict verifier (IFEval's strict accuracy; :mod:`.scoring` adds the loose one);
- ``conflicts``: the ids it is never combined with in one prompt (symmetric, and every type conflicts with itself).

:func:`constraint` binds an id to validated keyword arguments (a :class:`Constraint`, whose verifier is prepared
once); :func:`sample_constraints` draws a compatible set. Unknown ids and bad keyword arguments raise
:class:`ConstraintError` (a ``ValueError``) naming the id and the field.

Verifier semantics worth knowing (all IFEval's):

- An empty or whitespace-only response follows no instruction (IFEval checks ``response.strip()`` first).
- ``keywords:existence`` / ``keywords:frequency``: case-insensitive substring matches ("art" is found in "start");
  the frequency counts non-overlapping occurrences. ``keywords:forbidden_words``: case-insensitive whole words
  (``\\b`` boundaries). Keywords are matched literally (IFEval passes them to ``re`` unescaped; for plain words
  that is the same).
- ``keywords:letter_frequency``: occurrences of the letter in the lower-cased response (IFEval's data also uses
  symbols such as ``#`` and ``!`` as the "letter"; the sampler draws letters a-z).
- ``length_constraints:*``: ``relation`` is ``"less than"`` (count < N) or ``"at least"`` (count >= N); words
  and sentences are counted by :mod:`.text`. ``number_paragraphs``: chunks between ``***`` dividers must number
  exactly N; an empty first or last chunk is ignored, an empty chunk in the middle fails. ``nth_paragraph_first_word``:
  paragraphs are split on ``\\n\\n``, the non-empty ones must number exactly N, and paragraph ``nth_paragraph``
  must start with ``first_word`` (lower-cased, leading quotes dropped, cut at punctuation).
- ``detectable_content:number_placeholders``: at least N ``[...]`` spans. ``postscript``: the lower-cased response
  contains ``p.s.`` (marker ``P.S.``, also ``p. s.``), ``p.p.s`` (marker ``P.P.S``, also ``p. p. s``), or the
  lower-cased marker itself for any other marker; a postscript need not be at the very end.
- ``detectable_format:number_bullet_lists``: exactly N lines that start (after spaces) with ``*`` followed by a
  character other than ``*``, or with ``-`` (so ``---`` rules count too, as in IFEval; counted line by line, so
  a lone ``*`` line does not count, where IFEval's multi-line pattern would run into the next line).
  ``constrained_response``: contains "My answer is yes.", "My answer is no." or "My answer is maybe.".
  ``number_highlighted_sections``: at least N non-empty one-line ``*...*`` spans plus non-empty ``**...**``
  spans. ``multiple_sections``: at least N occurrences of ``<section_spliter> <number>`` (case-sensitive).
  ``json_format``: the stripped response, without a leading ```` ```json ```` / ```` ``` ```` and a trailing
  ```` ``` ````, parses as JSON. ``title``: a non-empty ``<<...>>`` on one line.
- ``combination:two_responses``: split on ``******``; empty first/last pieces are ignored, an empty middle piece
  fails; exactly two pieces remain and they differ after stripping. ``repeat_prompt``: the stripped response starts
  with the stripped prompt, case-insensitively.
- ``startend:end_checker``: the response, stripped of whitespace and then of ``"``, ends with the phrase
  (case-insensitive). ``quotation``: the stripped response has at least two characters and starts and ends with
  ``"``.
- ``change_case:capital_word_frequency``: words written in capitals (``str.isupper``); ``english_capital`` /
  ``english_lowercase``: ``str.isupper()`` / ``str.islower()`` of the whole response, and the language detected as
  English when ``langdetect`` is installed (without it only the case is checked; IFEval always checks both).
- ``language:response_language``: ``langdetect`` must detect the language code; an undetectable text counts as
  followed (IFEval). Needs the optional ``langdetect`` package: without it :meth:`ConstraintType.check` raises
  :class:`MissingExtraError` (sampling and describing still work).
- ``punctuation:no_comma``: no ``,`` at all.

Conflict table (``CONFLICTS``, made symmetric; every type also conflicts with itself, so an id appears at most
once in a sampled set). Taken from IFEval's table:

- ``detectable_format:constrained_response`` conflicts with every type (the answer is one fixed sentence).
- ``detectable_format:json_format`` with every type except ``keywords:existence`` and ``keywords:forbidden_words``.
- ``combination:two_responses`` with every type except ``keywords:existence``, ``keywords:forbidden_words``,
  ``language:response_language``, ``detectable_format:title`` and ``punctuation:no_comma``.
- ``combination:repeat_prompt`` with every type except ``keywords:existence``, ``detectable_format:title`` and
  ``punctuation:no_comma``.
- ``language:response_language`` with ``keywords:existence``, ``keywords:frequency``, ``keywords:forbidden_words``
  (English keywords), ``startend:end_checker`` (English phrase), ``detectable_format:multiple_sections`` and
  ``change_case:english_capital`` / ``english_lowercase``.
- ``length_constraints:number_paragraphs`` with ``nth_paragraph_first_word`` (two paragraph conventions) and
  ``number_sentences``.
- ``detectable_format:multiple_sections`` with ``number_highlighted_sections``.
- ``change_case:capital_word_frequency`` with ``english_capital`` and ``english_lowercase``;
  ``english_capital`` with ``english_lowercase``.
- ``startend:quotation`` with ``detectable_format:title``.

Our additions (choices): ``language:response_language`` also conflicts with
``length_constraints:nth_paragraph_first_word`` (an English first word) and ``change_case:capital_word_frequency``
(many scripts have no capitals); ``change_case:english_lowercase`` also conflicts with
``detectable_format:multiple_sections`` (the splitter is matched case-sensitively and starts with a capital).

Sampler ranges (choices; IFEval's where it has one): sentences 1-20, paragraphs 2-5 (IFEval: 1-5), words 50-500
(IFEval: 100-500), placeholders 1-4, bullets 1-5, highlights 1-4, sections 2-5 (IFEval: 1-5), keyword frequency
1-3, letter frequency 1-10, capital-word frequency 1-20, 1-3 keywords or forbidden words (IFEval: 2); postscript
markers ``P.S.`` / ``P.P.S``, section splitters ``Section`` / ``SECTION``, and five end phrases. Keyword
arguments read from data may hold other values (any marker, splitter or phrase); counts and frequencies must be
integers >= 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Literal

from core.errors import MissingExtraError
from pipelines.instruction_following.text import (
    ResponseText,
    paragraph_first_word,
    split_blank_line_paragraphs,
    split_star_paragraphs,
)

__all__ = [
    "CONFLICTS",
    "CONSTRAINED_RESPONSE_OPTIONS",
    "CONSTRAINT_TYPES",
    "LANGUAGE_NAMES",
    "RELATIONS",
    "Relation",
    "Constraint",
    "ConstraintError",
    "ConstraintType",
    "FieldSpec",
    "MissingExtraError",
    "SampleContext",
    "are_compatible",
    "constraint",
    "detect_language",
    "get_constraint_type",
    "sample_constraints",
]

Relation = Literal["less than", "at least"]
RELATIONS: tuple[str, str] = ("less than", "at least")
CONSTRAINED_RESPONSE_OPTIONS: tuple[str, ...] = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

#: ISO 639-1 codes IFEval samples response languages from, with their English names.
LANGUAGE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi", "fr": "French",
        "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian", "bn": "Bengali", "uk": "Ukrainian",
        "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu", "bg": "Bulgarian", "ko": "Korean",
        "pl": "Polish", "he": "Hebrew", "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili",
        "kn": "Kannada", "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
    }
)  # fmt: skip

# Common English nouns for keywords, forbidden words and first words when the context has no topic words.
WORD_LIST: tuple[str, ...] = tuple(
    """
    account animal answer apple area autumn balance basket beach bicycle bird blanket book bottle bridge brother
    budget building butter camera candle canvas captain castle chair chance chapter cheese child circle city cloud
    coffee colour comfort computer corner country courage cousin crowd culture danger daughter desert diamond
    dinner doctor dream driver engine evening factory family farmer feather festival field flower forest fortune
    friend garden glass harbor health history holiday honey horizon horse hospital island journey kitchen ladder
    language lantern lesson letter library light market meadow memory message method minute mirror moment morning
    mountain museum music nature needle neighbor network notebook ocean office orange painting paper parent
    pattern pencil people pepper picture planet pocket poem police potato power question rabbit radio river road
    rocket season secret shadow shelter signal silver sister smile society soldier song spring station story
    street student summer sunset surface system teacher theory ticket tomato tower traffic train treasure tree
    valley village voice water weather window winter wisdom wood world writer yellow
    """.split()
)

_STOPWORDS = frozenset(
    """
    a about above after again against all also an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or
    other our out over own same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will with would you
    your write explain describe give make tell short long list please about essay story letter poem using use
    """.split()
)

_END_PHRASES = (
    "Any other questions?",
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "That is all for now.",
    "Thank you for reading.",
)
_POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
_SECTION_SPLITTERS = ("Section", "SECTION")


class ConstraintError(ValueError):
    """An unknown constraint id or bad keyword arguments; names the id and, where known, the field."""

    def __init__(self, constraint_id: str, problem: str, field: str | None = None) -> None:
        self.constraint_id = constraint_id
        self.field = field
        self.problem = problem
        where = f"constraint {constraint_id!r}" + (f", field {field!r}" if field is not None else "")
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------------------------------- languages

_langdetect_state: dict[str, ModuleType | None] = {}  # "module" -> the module, or None once its import failed


def _langdetect_or_none() -> ModuleType | None:
    if "module" not in _langdetect_state:
        try:
            import langdetect  # type: ignore[import-not-found]
        except ImportError:
            _langdetect_state["module"] = None
        else:
            langdetect.DetectorFactory.seed = 0  # langdetect is random unless seeded
            _langdetect_state["module"] = langdetect
    return _langdetect_state["module"]


def _langdetect() -> ModuleType:
    module = _langdetect_or_none()
    if module is None:
        raise MissingExtraError("language detection needs `pip install langdetect` (the `langdetect` extra)")
    return module


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text`` per ``langdetect`` (seeded), or ``None`` when it cannot tell.

    Raises :class:`MissingExtraError` when ``langdetect`` is not installed. Results are cached (detection is slow,
    and the strict and loose checks of one response ask about the same texts).
    """
    _langdetect()
    return _detect_cached(text)


@functools.lru_cache(maxsize=4096)
def _detect_cached(text: str) -> str | None:
    module = _langdetect()
    try:
        return str(module.detect(text))
    except module.LangDetectException:
        return None


# --------------------------------------------------------------------------------------------------- fields

FieldKind = Literal["count", "relation", "text", "word", "words", "letter", "language"]


@dataclass(frozen=True)
class FieldSpec:
    """One keyword argument of a constraint type.

    ``kind``: ``count`` (an int >= ``minimum``), ``relation`` (``"less than"`` / ``"at least"``), ``text`` (a
    non-empty string, stripped unless ``keep_spaces``), ``word`` (one word, lower-cased), ``words`` (a non-empty
    list of non-empty strings), ``letter`` (one character, usually a letter, lower-cased), ``language`` (a code of
    :data:`LANGUAGE_NAMES`). ``shown``: whether phrasings name the value (the prompt to repeat is not).
    """

    name: str
    kind: FieldKind
    minimum: int = 1
    shown: bool = True
    keep_spaces: bool = False


def _validate_field(cid: str, spec: FieldSpec, value: Any) -> Any:
    def bad(expected: str) -> ConstraintError:
        return ConstraintError(cid, f"expected {expected}, got {value!r}", spec.name)

    if spec.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"an integer >= {spec.minimum}")
        if value < spec.minimum:
            raise bad(f"an integer >= {spec.minimum}")
        return value
    if spec.kind == "relation":
        if value not in RELATIONS:
            raise bad(f"one of {list(RELATIONS)}")
        return value
    if spec.kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        return value if spec.keep_spaces else value.strip()
    if spec.kind == "word":
        if not isinstance(value, str) or not value.strip() or len(value.split()) != 1:
            raise bad("a single word")
        return value.strip().lower()
    if spec.kind == "words":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise bad("a non-empty list of strings")
        if not all(isinstance(w, str) and w.strip() for w in value):
            raise bad("a non-empty list of non-empty strings")
        return [w.strip() for w in value]
    if spec.kind == "letter":  # IFEval's data also counts symbols ("#", "!"), so any one character is accepted
        if not isinstance(value, str) or len(value.strip()) != 1:
            raise bad("a single character")
        return value.strip().lower()
    if spec.kind == "language":
        if value not in LANGUAGE_NAMES:
            raise bad(f"a language code among {sorted(LANGUAGE_NAMES)}")
        return value
    raise AssertionError(spec.kind)  # pragma: no cover


# --------------------------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class SampleContext:
    """What a sampler may use from the base task.

    ``prompt``: the base task text (``combination:repeat_prompt`` repeats it). ``topic_words``: words from the
    task or its topic, preferred for keywords and forbidden words. ``exclude_words``: words already used by
    other constraints of the same prompt (so a keyword is never also a forbidden word).
    """

    prompt: str = ""
    topic_words: tuple[str, ...] = ()
    exclude_words: frozenset[str] = frozenset()

    @classmethod
    def coerce(cls, context: SampleContext | Mapping[str, Any] | None) -> SampleContext:
        """Accept a :class:`SampleContext`, a mapping with the same keys, or ``None``."""
        if context is None:
            return cls()
        if isinstance(context, SampleContext):
            return context
        return cls(
            prompt=str(context.get("prompt", "")),
            topic_words=tuple(context.get("topic_words", ())),
            exclude_words=frozenset(context.get("exclude_words", ())),
        )


def _pick_words(rng: random.Random, k: int, context: SampleContext, *, topical: bool = True) -> list[str]:
    """``k`` distinct words: from the topic words when there are enough, else from :data:`WORD_LIST`."""
    excluded = {w.lower() for w in context.exclude_words}
    if topical:
        seen: dict[str, None] = {}
        for word in context.topic_words:
            w = word.strip().lower()
            if len(w) >= 3 and w.isalpha() and w not in _STOPWORDS and w not in excluded:
                seen[w] = None
        topic = list(seen)
        if len(topic) >= k:
            return rng.sample(topic, k)
    if len(excluded) < len(WORD_LIST) // 2:  # rejection sampling: cheap when few words are excluded
        while True:
            picked = rng.sample(WORD_LIST, k)
            if not excluded.intersection(picked):
                return picked
    return rng.sample([w for w in WORD_LIST if w not in excluded], k)


def _relation_holds(actual: int, relation: str, threshold: int) -> bool:
    return actual < threshold if relation == "less than" else actual >= threshold


# --------------------------------------------------------------------------------------------------- types

Checker = Callable[[ResponseText], bool]
Sampler = Callable[[random.Random, SampleContext], dict[str, Any]]


def _quoted_list(values: Iterable[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class ConstraintType:
    """One verifiable instruction type (IFEval, Zhou et al. 2023): sampler, phrasings, verifier, conflicts."""

    id: str
    fields: tuple[FieldSpec, ...]
    phrasings: tuple[str, ...]
    sampler: Sampler = field(repr=False)
    prepare: Callable[[dict[str, Any]], Checker] = field(repr=False)
    extra_render: Callable[[dict[str, Any]], dict[str, str]] | None = field(default=None, repr=False)
    conflicts: frozenset[str] = frozenset()
    needs_langdetect: bool = False

    def validate(self, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Checked and normalised keyword arguments. Keys whose value is ``None`` are ignored (as in IFEval data)."""
        given = {k: v for k, v in (kwargs or {}).items() if v is not None}
        known = {f.name for f in self.fields}
        for key in given:
            if key not in known:
                allowed = ", ".join(sorted(known)) or "none"
                raise ConstraintError(self.id, f"unknown keyword argument (allowed: {allowed})", key)
        out: dict[str, Any] = {}
        for spec in self.fields:
            if spec.name not in given:
                raise ConstraintError(self.id, "missing keyword argument", spec.name)
            out[spec.name] = _validate_field(self.id, spec, given[spec.name])
        if "nth_paragraph" in out and out["nth_paragraph"] > out["num_paragraphs"]:
            raise ConstraintError(
                self.id,
                f"must be at most num_paragraphs ({out['num_paragraphs']}), got {out['nth_paragraph']}",
                "nth_paragraph",
            )
        return out

    def sample(self, rng: random.Random, context: SampleContext | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Random keyword arguments for this type (validated)."""
        return self.validate(self.sampler(rng, SampleContext.coerce(context)))

    def render_values(self, kwargs: Mapping[str, Any]) -> dict[str, str]:
        """The strings phrasings substitute for each keyword argument (lists quoted, languages named)."""
        values: dict[str, str] = {}
        for key, value in kwargs.items():
            if isinstance(value, list):
                values[key] = _quoted_list(value)
            elif key == "language":
                values[key] = LANGUAGE_NAMES[value]
            else:
                values[key] = str(value)
        if self.extra_render is not None:
            values.update(self.extra_render(dict(kwargs)))
        return values

    def describe(self, kwargs: Mapping[str, Any] | None = None, rng: random.Random | None = None) -> str:
        """A natural-language instruction for ``kwargs``: a random phrasing (the first when ``rng`` is None)."""
        valid = self.validate(kwargs)
        template = self.phrasings[0] if rng is None else rng.choice(self.phrasings)
        return template.format(**self.render_values(valid))

    def bind(self, kwargs: Mapping[str, Any] | None = None) -> Constraint:
        """This type with validated keyword arguments, its verifier prepared once."""
        valid = self.validate(kwargs)
        return Constraint(self, valid, self.prepare(valid))

    def check(self, response: str | ResponseText, kwargs: Mapping[str, Any] | None = None) -> bool:
        """Strict verifier (IFEval): whether ``response`` follows this instruction with ``kwargs``."""
        return self.bind(kwargs).check(response)


@dataclass(frozen=True)
class Constraint:
    """A constraint type bound to validated keyword arguments (an entry of a prompt's instruction list)."""

    type: ConstraintType
    kwargs: dict[str, Any]
    _checker: Checker = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.type.id

    def check(self, response: str | ResponseText) -> bool:
        """Strict verifier: an empty or whitespace-only response never passes (IFEval)."""
        view = response if isinstance(response, ResponseText) else ResponseText(response)
        if not view.stripped:
            return False
        return self._checker(view)

    def describe(self, rng: random.Random | None = None) -> str:
        return self.type.describe(self.kwargs, rng)

    def to_json(self) -> dict[str, Any]:
        """``{"id", "kwargs"}``, the suite's own serialisation of one constraint."""
        return {"id": self.id, "kwargs": dict(self.kwargs)}


# ------------------------------------------------------------------------------------------ checker factories


def _keywords_existence(kw: dict[str, Any]) -> Checker:
    patterns = [re.compile(re.escape(k), re.IGNORECASE) for k in kw["keywords"]]
    return lambda r: all(p.search(r.text) for p in patterns)


def _keywords_frequency(kw: dict[str, Any]) -> Checker:
    pattern = re.compile(re.escape(kw["keyword"]), re.IGNORECASE)
    relation, frequency = kw["relation"], kw["frequency"]
    return lambda r: _relation_holds(len(pattern.findall(r.text)), relation, frequency)


def _forbidden_words(kw: dict[str, Any]) -> Checker:
    pattern = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in kw["forbidden_words"]), re.IGNORECASE)
    return lambda r: pattern.search(r.text) is None


def _letter_frequency(kw: dict[str, Any]) -> Checker:
    letter, relation, frequency = kw["letter"], kw["let_relation"], kw["let_frequency"]
    return lambda r: _relation_holds(r.lower.count(letter), relation, frequency)


def _response_language(kw: dict[str, Any]) -> Checker:
    language = kw["language"]

    def check(r: ResponseText) -> bool:
        detected = detect_language(r.text)
        return detected is None or detected == language  # undetectable counts as followed (IFEval)

    return check


def _number_sentences(kw: dict[str, Any]) -> Checker:
    relation, n = kw["relation"], kw["num_sentences"]
    return lambda r: _relation_holds(r.n_sentences, relation, n)


def _number_paragraphs(kw: dict[str, Any]) -> Checker:
    n = kw["num_paragraphs"]

    def check(r: ResponseText) -> bool:
        chunks = split_star_paragraphs(r.text)
        count = len(chunks)
        last = count - 1
        for i, chunk in enumerate(chunks):
            if not chunk.strip():
                if i == 0 or i == last:
                    count -= 1
                else:
                    return False
        return count == n

    return check


def _number_words(kw: dict[str, Any]) -> Checker:
    relation, n = kw["relation"], kw["num_words"]
    return lambda r: _relation_holds(r.n_words, relation, n)


def _nth_paragraph_first_word(kw: dict[str, Any]) -> Checker:
    n, nth, word = kw["num_paragraphs"], kw["nth_paragraph"], kw["first_word"]

    def check(r: ResponseText) -> bool:
        chunks = split_blank_line_paragraphs(r.text)
        count = sum(1 for c in chunks if c.strip())
        if nth > count:
            return False
        paragraph = chunks[nth - 1].strip()  # indexes the raw chunks, as IFEval
        if not paragraph:
            return False
        return count == n and paragraph_first_word(paragraph) == word

    return check


_PLACEHOLDER = re.compile(r"\[.*?\]")


def _number_placeholders(kw: dict[str, Any]) -> Checker:
    n = kw["num_placeholders"]
    return lambda r: len(_PLACEHOLDER.findall(r.text)) >= n


def _postscript(kw: dict[str, Any]) -> Checker:
    marker = kw["postscript_marker"]
    if marker == "P.P.S":
        pattern = re.compile(r"p\.\s?p\.\s?s")
    elif marker == "P.S.":
        pattern = re.compile(r"p\.\s?s\.")
    else:
        pattern = re.compile(re.escape(marker.lower()))
    return lambda r: pattern.search(r.lower) is not None


_STAR_BULLET = re.compile(r"^[ \t\r\f\v]*\*[^*\n]", re.MULTILINE)
_DASH_BULLET = re.compile(r"^[ \t\r\f\v]*-", re.MULTILINE)


def _number_bullet_lists(kw: dict[str, Any]) -> Checker:
    n = kw["num_bullets"]
    return lambda r: len(_STAR_BULLET.findall(r.text)) + len(_DASH_BULLET.findall(r.text)) == n


def _constrained_response(kw: dict[str, Any]) -> Checker:
    return lambda r: any(option in r.stripped for option in CONSTRAINED_RESPONSE_OPTIONS)


_SINGLE_HIGHLIGHT = re.compile(r"\*[^\n*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n*]*\*\*")


def _number_highlighted_sections(kw: dict[str, Any]) -> Checker:
    n = kw["num_highlights"]

    def check(r: ResponseText) -> bool:
        count = sum(1 for h in _SINGLE_HIGHLIGHT.findall(r.text) if h.strip("*").strip())
        count += sum(1 for h in _DOUBLE_HIGHLIGHT.findall(r.text) if h[2:-2].strip())
        return count >= n

    return check


def _multiple_sections(kw: dict[str, Any]) -> Checker:
    pattern = re.compile(re.escape(kw["section_spliter"]) + r"\s?\d+")
    n = kw["num_sections"]
    return lambda r: len(pattern.findall(r.text)) >= n


_JSON_FENCE_OPENERS = ("```json", "```Json", "```JSON", "```")


def _json_format(kw: dict[str, Any]) -> Checker:
    def check(r: ResponseText) -> bool:
        value = r.stripped
        for opener in _JSON_FENCE_OPENERS:  # IFEval removes these prefixes one after the other
            value = value.removeprefix(opener)
        value = value.removesuffix("```").strip()
        if not value or value[0] not in '{["-0123456789tfnNI':  # cheap rejection of prose
            return False
        try:
            json.loads(value)
        except ValueError:
            return False
        return True

    return check


_TITLE = re.compile(r"<<[^\n]+>>")


def _title(kw: dict[str, Any]) -> Checker:
    return lambda r: any(t.lstrip("<").rstrip(">").strip() for t in _TITLE.findall(r.text))


def _two_responses(kw: dict[str, Any]) -> Checker:
    def check(r: ResponseText) -> bool:
        pieces = r.text.split("******")
        last = len(pieces) - 1
        kept: list[str] = []
        for i, piece in enumerate(pieces):
            if piece.strip():
                kept.append(piece.strip())
            elif 0 < i < last:
                return False
        return len(kept) == 2 and kept[0] != kept[1]

    return check


def _repeat_prompt(kw: dict[str, Any]) -> Checker:
    prompt = kw["prompt_to_repeat"].strip().lower()
    return lambda r: r.stripped.lower().startswith(prompt)


def _end_checker(kw: dict[str, Any]) -> Checker:
    phrase = kw["end_phrase"].strip().lower()
    return lambda r: r.stripped.strip('"').lower().endswith(phrase)


def _quotation(kw: dict[str, Any]) -> Checker:
    return lambda r: len(r.stripped) > 1 and r.stripped[0] == '"' and r.stripped[-1] == '"'


def _capital_word_frequency(kw: dict[str, Any]) -> Checker:
    relation, n = kw["capital_relation"], kw["capital_frequency"]
    return lambda r: _relation_holds(r.n_capital_words, relation, n)


def _is_english(text: str) -> bool:
    """English per langdetect (undetectable counts as English, as IFEval); True when langdetect is missing."""
    if _langdetect_or_none() is None:
        return True
    detected = detect_language(text)
    return detected is None or detected == "en"


def _english_capital(kw: dict[str, Any]) -> Checker:
    return lambda r: r.text.isupper() and _is_english(r.text)


def _english_lowercase(kw: dict[str, Any]) -> Checker:
    return lambda r: r.text.islower() and _is_english(r.text)


def _no_comma(kw: dict[str, Any]) -> Checker:
    return lambda r: "," not in r.text


# --------------------------------------------------------------------------------------------------- samplers


def _relation(rng: random.Random) -> str:
    return rng.choice(RELATIONS)


def _sample_repeat_prompt(rng: random.Random, ctx: SampleContext) -> dict[str, Any]:
    if not ctx.prompt.strip():
        raise ConstraintError(
            "combination:repeat_prompt", "the sampler needs the base prompt (SampleContext.prompt)", "prompt_to_repeat"
        )
    return {"prompt_to_repeat": ctx.prompt}


def _sample_nth_paragraph(rng: random.Random, ctx: SampleContext) -> dict[str, Any]:
    n = rng.randint(2, 5)
    return {
        "num_paragraphs": n,
        "nth_paragraph": rng.randint(1, n),
        "first_word": _pick_words(rng, 1, ctx, topical=False)[0],
    }


# --------------------------------------------------------------------------------------------------- registry

_K, _L, _C, _F = "keywords:", "length_constraints:", "detectable_content:", "detectable_format:"


def _t(
    cid: str,
    fields: Sequence[FieldSpec],
    phrasings: Sequence[str],
    sampler: Sampler,
    prepare: Callable[[dict[str, Any]], Checker],
    extra_render: Callable[[dict[str, Any]], dict[str, str]] | None = None,
    needs_langdetect: bool = False,
) -> ConstraintType:
    return ConstraintType(
        id=cid,
        fields=tuple(fields),
        phrasings=tuple(phrasings),
        sampler=sampler,
        prepare=prepare,
        extra_render=extra_render,
        needs_langdetect=needs_langdetect,
    )


def _no_kwargs(rng: random.Random, ctx: SampleContext) -> dict[str, Any]:
    return {}


_TYPES: list[ConstraintType] = [
    _t(
        _K + "existence",
        [FieldSpec("keywords", "words")],
        [
            "Include keywords {keywords} in the response.",
            "Make sure your answer uses each of these words: {keywords}.",
            "Your response must mention {keywords}.",
            "Work the following keywords into your reply: {keywords}.",
        ],
        lambda rng, ctx: {"keywords": _pick_words(rng, rng.randint(1, 3), ctx)},
        _keywords_existence,
    ),
    _t(
        _K + "frequency",
        [FieldSpec("keyword", "text"), FieldSpec("frequency", "count"), FieldSpec("relation", "relation")],
        [
            "In your response, the word {keyword} should appear {relation} {frequency} times.",
            'Use the word "{keyword}" {relation} {frequency} times in your answer.',
            'The word "{keyword}" must occur {relation} {frequency} times in your reply.',
        ],
        lambda rng, ctx: {
            "keyword": _pick_words(rng, 1, ctx)[0],
            "frequency": rng.randint(1, 3),
            "relation": _relation(rng),
        },
        _keywords_frequency,
    ),
    _t(
        _K + "forbidden_words",
        [FieldSpec("forbidden_words", "words")],
        [
            "Do not include keywords {forbidden_words} in the response.",
            "Avoid the words {forbidden_words} entirely.",
            "Your answer must not contain any of these words: {forbidden_words}.",
        ],
        lambda rng, ctx: {"forbidden_words": _pick_words(rng, rng.randint(1, 3), ctx)},
        _forbidden_words,
    ),
    _t(
        _K + "letter_frequency",
        [FieldSpec("letter", "letter"), FieldSpec("let_frequency", "count"), FieldSpec("let_relation", "relation")],
        [
            "In your response, the letter {letter} should appear {let_relation} {let_frequency} times.",
            'Make sure the letter "{letter}" occurs {let_relation} {let_frequency} times in your answer.',
            "Write your reply so that the letter '{letter}' is used {let_relation} {let_frequency} times.",
        ],
        lambda rng, ctx: {
            "letter": rng.choice(string.ascii_lowercase),
            "let_frequency": rng.randint(1, 10),
            "let_relation": _relation(rng),
        },
        _letter_frequency,
    ),
    _t(
        "language:response_language",
        [FieldSpec("language", "language")],
        [
            "Your ENTIRE response should be in {language} language, no other language is allowed.",
            "Respond only in {language}.",
            "Write your whole answer in {language}; do not use any other language.",
        ],
        lambda rng, ctx: {"language": rng.choice(sorted(LANGUAGE_NAMES))},
        _response_language,
        needs_langdetect=True,
    ),
    _t(
        _L + "number_sentences",
        [FieldSpec("num_sentences", "count"), FieldSpec("relation", "relation")],
        [
            "Your response should contain {relation} {num_sentences} sentences.",
            "Answer in {relation} {num_sentences} sentences.",
            "Use {relation} {num_sentences} sentences in your reply.",
        ],
        lambda rng, ctx: {"num_sentences": rng.randint(1, 20), "relation": _relation(rng)},
        _number_sentences,
    ),
    _t(
        _L + "number_paragraphs",
        [FieldSpec("num_paragraphs", "count")],
        [
            "There should be {num_paragraphs} paragraphs. Paragraphs are separated with the markdown divider: ***",
            "Write exactly {num_paragraphs} paragraphs, separated from each other by the markdown divider ***.",
            "Your answer must have {num_paragraphs} paragraphs; put a line with *** between consecutive paragraphs.",
        ],
        lambda rng, ctx: {"num_paragraphs": rng.randint(2, 5)},
        _number_paragraphs,
    ),
    _t(
        _L + "number_words",
        [FieldSpec("num_words", "count"), FieldSpec("relation", "relation")],
        [
            "Answer with {relation} {num_words} words.",
            "Your response should be {relation} {num_words} words long.",
            "Use {relation} {num_words} words in your response.",
        ],
        lambda rng, ctx: {"num_words": rng.randint(50, 500), "relation": _relation(rng)},
        _number_words,
    ),
    _t(
        _L + "nth_paragraph_first_word",
        [FieldSpec("num_paragraphs", "count"), FieldSpec("nth_paragraph", "count"), FieldSpec("first_word", "word")],
        [
            "There should be {num_paragraphs} paragraphs. Paragraphs and only paragraphs are separated with each "
            "other by two new lines as if it was '\\n\\n' in python. Paragraph {nth_paragraph} must start with "
            "word {first_word}.",
            "Write {num_paragraphs} paragraphs separated by blank lines, and begin paragraph number {nth_paragraph} "
            'with the word "{first_word}".',
            "Your answer needs exactly {num_paragraphs} paragraphs (separate them with an empty line); the "
            '{nth_ordinal} paragraph must start with "{first_word}".',
        ],
        _sample_nth_paragraph,
        _nth_paragraph_first_word,
        extra_render=lambda kw: {"nth_ordinal": _ordinal(kw["nth_paragraph"])},
    ),
    _t(
        _C + "number_placeholders",
        [FieldSpec("num_placeholders", "count")],
        [
            "The response must contain at least {num_placeholders} placeholders represented by square brackets, "
            "such as [address].",
            "Include at least {num_placeholders} placeholders in square brackets, like [name].",
            "Leave at least {num_placeholders} blanks for the reader to fill in, written as square-bracket "
            "placeholders such as [date].",
        ],
        lambda rng, ctx: {"num_placeholders": rng.randint(1, 4)},
        _number_placeholders,
    ),
    _t(
        _C + "postscript",
        [FieldSpec("postscript_marker", "text")],
        [
            "At the end of your response, please explicitly add a postscript starting with {postscript_marker}",
            'Finish with a postscript that begins with "{postscript_marker}".',
            "After your main answer, add a note starting with {postscript_marker}",
        ],
        lambda rng, ctx: {"postscript_marker": rng.choice(_POSTSCRIPT_MARKERS)},
        _postscript,
    ),
    _t(
        _F + "number_bullet_lists",
        [FieldSpec("num_bullets", "count")],
        [
            "Your answer must contain exactly {num_bullets} bullet points. Use the markdown bullet points such as:\n"
            "* This is point 1.\n* This is point 2",
            'Give exactly {num_bullets} markdown bullet points (lines starting with "* ").',
            'Format your answer as a list of exactly {num_bullets} bullet points using markdown, e.g. "* point".',
        ],
        lambda rng, ctx: {"num_bullets": rng.randint(1, 5)},
        _number_bullet_lists,
    ),
    _t(
        _F + "constrained_response",
        [],
        [
            "Answer with one of the following options: {options}",
            "Your reply must contain one of these exact phrases: {options}.",
            "Pick one of {options} and include it in your answer.",
        ],
        _no_kwargs,
        _constrained_response,
        extra_render=lambda kw: {"options": _quoted_list(CONSTRAINED_RESPONSE_OPTIONS)},
    ),
    _t(
        _F + "number_highlighted_sections",
        [FieldSpec("num_highlights", "count")],
        [
            "Highlight at least {num_highlights} sections in your answer with markdown, i.e. *highlighted section*.",
            "Use markdown to highlight at least {num_highlights} parts of your response, for example *key part*.",
            "Mark at least {num_highlights} sections as highlighted by wrapping them in single asterisks, like *this*.",
        ],
        lambda rng, ctx: {"num_highlights": rng.randint(1, 4)},
        _number_highlighted_sections,
    ),
    _t(
        _F + "multiple_sections",
        [FieldSpec("section_spliter", "text"), FieldSpec("num_sections", "count")],
        [
            "Your response must have {num_sections} sections. Mark the beginning of each section with "
            "{section_spliter} X, such as:\n{section_spliter} 1\n[content of section 1]\n{section_spliter} 2\n"
            "[content of section 2]",
            'Split your answer into {num_sections} sections, starting each with "{section_spliter} N" where N is '
            "its number.",
            "Organise the response in {num_sections} parts; begin each part with a header of the form "
            "{section_spliter} 1, {section_spliter} 2, and so on.",
        ],
        lambda rng, ctx: {"section_spliter": rng.choice(_SECTION_SPLITTERS), "num_sections": rng.randint(2, 5)},
        _multiple_sections,
    ),
    _t(
        _F + "json_format",
        [],
        [
            "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
            "Return your whole answer as valid JSON (a ``` code fence around it is fine).",
            "Format the entire response as a JSON object; nothing outside the JSON is allowed except optional ``` "
            "fences.",
        ],
        _no_kwargs,
        _json_format,
    ),
    _t(
        _F + "title",
        [],
        [
            "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
            "Give your response a title in double angle brackets, like <<my title>>.",
            "Include a title enclosed in double angular brackets, e.g. <<a day at sea>>.",
        ],
        _no_kwargs,
        _title,
    ),
    _t(
        "combination:two_responses",
        [],
        [
            "Give two different responses. Responses and only responses should be separated by 6 asterisk "
            "symbols: ******.",
            "Write two distinct answers and separate them with a line of six asterisks (******).",
            "Provide two alternative responses that differ from each other, separated by ******.",
        ],
        _no_kwargs,
        _two_responses,
    ),
    _t(
        "combination:repeat_prompt",
        [FieldSpec("prompt_to_repeat", "text", shown=False, keep_spaces=True)],
        [
            "First repeat the request word for word without change, then give your answer (1. do not say any words "
            "or characters before repeating the request; 2. the request you need to repeat does not include this "
            "sentence)",
            "Begin by restating the request exactly as written (leaving out this instruction), then answer it.",
            "Before answering, copy the request above word for word, with nothing before it; do not copy this "
            "sentence.",
        ],
        _sample_repeat_prompt,
        _repeat_prompt,
    ),
    _t(
        "startend:end_checker",
        [FieldSpec("end_phrase", "text")],
        [
            "Finish your response with this exact phrase {end_phrase}. No other words should follow this phrase.",
            'End your answer with the exact phrase "{end_phrase}", with nothing after it.',
            "The very last words of your reply must be: {end_phrase}",
        ],
        lambda rng, ctx: {"end_phrase": rng.choice(_END_PHRASES)},
        _end_checker,
    ),
    _t(
        "startend:quotation",
        [],
        [
            "Wrap your entire response with double quotation marks.",
            "Put your whole answer inside double quotes.",
            'Enclose the entire reply in a pair of double quotation marks (").',
        ],
        _no_kwargs,
        _quotation,
    ),
    _t(
        "change_case:capital_word_frequency",
        [FieldSpec("capital_frequency", "count"), FieldSpec("capital_relation", "relation")],
        [
            "In your response, words with all capital letters should appear {capital_relation} {capital_frequency} "
            "times.",
            "Use {capital_relation} {capital_frequency} words written entirely in capital letters.",
            "Your reply should contain {capital_relation} {capital_frequency} ALL-CAPS words.",
        ],
        lambda rng, ctx: {"capital_frequency": rng.randint(1, 20), "capital_relation": _relation(rng)},
        _capital_word_frequency,
    ),
    _t(
        "change_case:english_capital",
        [],
        [
            "Your entire response should be in English, and in all capital letters.",
            "Reply in English using only CAPITAL LETTERS.",
            "Write the whole answer in English and in uppercase letters only.",
        ],
        _no_kwargs,
        _english_capital,
    ),
    _t(
        "change_case:english_lowercase",
        [],
        [
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            "Reply in English using only lowercase letters; no capitals at all.",
            "Write everything in English and in lower case, without a single capital letter.",
        ],
        _no_kwargs,
        _english_lowercase,
    ),
    _t(
        "punctuation:no_comma",
        [],
        [
            "In your entire response, refrain from the use of any commas.",
            "Do not use any commas in your answer.",
            "Write your reply without a single comma.",
        ],
        _no_kwargs,
        _no_comma,
    ),
]

_ALL_IDS = frozenset(t.id for t in _TYPES)
_SORTED_IDS = sorted(_ALL_IDS)

# Declared conflicts (see the module docstring); symmetrised and self-conflicts added below.
_DECLARED_CONFLICTS: dict[str, set[str]] = {
    "language:response_language": {
        _K + "existence", _K + "frequency", _K + "forbidden_words", "startend:end_checker",
        _F + "multiple_sections", "change_case:english_capital", "change_case:english_lowercase",
        # ours:
        _L + "nth_paragraph_first_word", "change_case:capital_word_frequency",
    },
    _L + "number_paragraphs": {_L + "nth_paragraph_first_word", _L + "number_sentences"},
    _F + "constrained_response": set(_ALL_IDS),
    _F + "multiple_sections": {_F + "number_highlighted_sections", "change_case:english_lowercase"},  # ours: lower
    _F + "json_format": set(_ALL_IDS - {_K + "forbidden_words", _K + "existence"}),
    "combination:two_responses": set(
        _ALL_IDS - {_K + "forbidden_words", _K + "existence", "language:response_language", _F + "title",
                    "punctuation:no_comma"}
    ),
    "combination:repeat_prompt": set(_ALL_IDS - {_K + "existence", _F + "title", "punctuation:no_comma"}),
    "change_case:capital_word_frequency": {"change_case:english_capital", "change_case:english_lowercase"},
    "change_case:english_capital": {"change_case:english_lowercase"},
    "startend:quotation": {_F + "title"},
}  # fmt: skip


def _symmetric_conflicts(declared: Mapping[str, set[str]]) -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {cid: {cid} for cid in _ALL_IDS}
    for cid, others in declared.items():
        for other in others:
            table[cid].add(other)
            table[other].add(cid)
    return {cid: frozenset(others) for cid, others in table.items()}


#: Every type's conflicts: symmetric, and each type conflicts with itself.
CONFLICTS: Mapping[str, frozenset[str]] = MappingProxyType(_symmetric_conflicts(_DECLARED_CONFLICTS))

#: The registry: id -> :class:`ConstraintType`, in IFEval's order.
CONSTRAINT_TYPES: Mapping[str, ConstraintType] = MappingProxyType(
    {t.id: dataclasses.replace(t, conflicts=CONFLICTS[t.id]) for t in _TYPES}
)


def get_constraint_type(constraint_id: str) -> ConstraintType:
    """The registered type for ``constraint_id``; :class:`ConstraintError` if there is none."""
    try:
        return CONSTRAINT_TYPES[constraint_id]
    except (KeyError, TypeError):
        raise ConstraintError(str(constraint_id), "unknown constraint id") from None


def constraint(constraint_id: str, kwargs: Mapping[str, Any] | None = None) -> Constraint:
    """Bind ``constraint_id`` to ``kwargs`` (validated; ``None`` values ignored)."""
    return get_constraint_type(constraint_id).bind(kwargs)


def are_compatible(constraint_ids: Iterable[str]) -> bool:
    """Whether no two of ``constraint_ids`` conflict (a repeated id is a conflict)."""
    chosen: list[str] = []
    for cid in constraint_ids:
        get_constraint_type(cid)
        if any(cid in CONFLICTS[c] for c in chosen):
            return False
        chosen.append(cid)
    return True


def _constraint_words(kwargs: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for key in ("keywords", "forbidden_words"):
        found.update(w.lower() for w in kwargs.get(key, ()))
    for key in ("keyword", "first_word"):
        if key in kwargs:
            found.add(str(kwargs[key]).lower())
    return found


def sample_constraints(
    rng: random.Random,
    k: int,
    context: SampleContext | Mapping[str, Any] | None = None,
    *,
    ids: Iterable[str] | None = None,
    tries: int = 16,
) -> list[Constraint]:
    """Draw up to ``k`` mutually compatible constraints with sampled keyword arguments.

    Types are drawn one at a time, uniformly among those of ``ids`` (default: all; ``combination:repeat_prompt``
    needs ``context.prompt``) that conflict with none drawn so far, until ``k`` are drawn or none is left; up to
    ``tries`` draws are made to reach ``k`` (some types, such as ``detectable_format:constrained_response``,
    admit no partner, so fewer may come back). Words used by one constraint (keywords, forbidden words, first
    words) are excluded from the others.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ctx = SampleContext.coerce(context)
    if ids is None:
        pool = _SORTED_IDS
    else:
        pool = list(ids)
        for cid in pool:
            if cid not in CONSTRAINT_TYPES:
                get_constraint_type(cid)  # raises ConstraintError
    if not ctx.prompt.strip():
        pool = [cid for cid in pool if cid != "combination:repeat_prompt"]
    best: list[str] = []
    for _ in range(max(1, tries)):
        candidates = pool
        chosen: list[str] = []
        while candidates and len(chosen) < k:
            cid = rng.choice(candidates)
            chosen.append(cid)
            conflicts = CONFLICTS[cid]
            candidates = [c for c in candidates if c not in conflicts]
        if len(chosen) > len(best):
            best = chosen
        if len(best) == k:
            break
    out: list[Constraint] = []
    used = set(ctx.exclude_words)
    for cid in best:
        ctype = CONSTRAINT_TYPES[cid]
        kwargs = ctype.sample(rng, SampleContext(ctx.prompt, ctx.topic_words, frozenset(used)))
        used |= _constraint_words(kwargs)
        out.append(Constraint(ctype, kwargs, ctype.prepare(kwargs)))  # already validated by ``sample``
    return out
