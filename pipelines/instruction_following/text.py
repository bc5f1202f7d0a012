r"""Text helpers for the instruction-following verifiers: sentences, words, paragraphs. Pure standard library.

The semantics follow IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models"):

- **Words** are runs of word characters (``\w+``), as IFEval's ``RegexpTokenizer(r"\w+")``: ``"don't"`` is two
  words (``don``, ``t``), ``"state-of-the-art"`` four, ``"3.14"`` two. :func:`count_words` with
  ``apostrophes=True`` keeps ``don't`` as one word instead (not IFEval's count; offered for other uses).
- **Sentences**: IFEval counts them with NLTK's Punkt model, which needs downloaded data. :func:`split_sentences`
  is a rule-based splitter that follows Punkt on ordinary prose, without any data (see its docstring for the
  rules). Like Punkt, line breaks alone do not end a sentence.
- **Paragraphs** come in two IFEval flavours: separated by the markdown divider ``***``
  (``length_constraints:number_paragraphs``, :func:`split_star_paragraphs`) or by a blank line ``\n\n``
  (``length_constraints:nth_paragraph_first_word``, :func:`split_blank_line_paragraphs`).

:class:`ResponseText` wraps one response and computes each derived quantity (lower-cased text, word count,
sentence count, ...) at most once, so that several verifiers checking the same response share the work.
"""

from __future__ import annotations

import re

__all__ = [
    "ResponseText",
    "capital_word_count",
    "count_sentences",
    "count_words",
    "paragraph_first_word",
    "split_blank_line_paragraphs",
    "split_sentences",
    "split_star_paragraphs",
    "words",
]

_WORD = re.compile(r"\w+")
_WORD_APOSTROPHE = re.compile(r"\w+(?:['\u2019]\w+)*")
# nltk.word_tokenize keeps hyphenated words together and splits contractions ("DON'T" -> "DO", "N'T"); counting
# ``\w+(-\w+)*`` runs gives the same number of all-capital tokens for contractions ("DON", "T").
_CAPITAL_TOKEN = re.compile(r"\w+(?:-\w+)*")
# ASCII fast paths (same results as the regular expressions above on ASCII text): every byte that is not a word
# character (or, for capital words, not a word character or a hyphen) becomes a space, then ``bytes.split``.
_ASCII_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_ASCII_WORDS_TABLE = bytes(b if b in _ASCII_WORD_BYTES else 32 for b in range(256))
_ASCII_CAPITALS_TABLE = bytes(b if b in _ASCII_WORD_BYTES or b == 45 else 32 for b in range(256))

# Terminal punctuation (a run such as "?!" or "..."), then closing quotes, brackets or markdown emphasis, at the end
# of a whitespace-separated token. Punctuation inside a token ("3.14", "e.g.,") never matches.
_CLOSERS = "\"'\u201d\u2019)]}*_"
_TERMINAL = re.compile(r"[.?!\u2026][.?!\u2026]*[\"'\u201d\u2019)\]}*_]*(?!\S)")  # (one char first: a faster scan)
# The first character of the next word, skipping whitespace and opening quotes/brackets/emphasis.
_NEXT_CHAR = re.compile(r"\s*[\"'\u201c\u2018(\[{*_]*(.?)", re.S)
_ALNUM = re.compile(r"[^\W_]")
_OPENERS = "\"'\u201c\u2018([{*_"
_DOTTED_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")

# Abbreviations after which a period never ends a sentence (titles precede a name, Latin connectives more of the
# same sentence).
_NEVER_FINAL = frozenset(
    "mr mrs ms mx dr prof st mt messrs mmes rev fr gen col lt sgt capt cpt maj cmdr adm gov sen pres hon "
    "e.g i.e cf vs viz".split()
)
# Abbreviations that may also end a sentence ("My answer is no."): the period ends one only when the next word is
# capitalised ("No. 5" and "etc. and" continue, "etc. Then" ends).
_MAYBE_FINAL = frozenset(
    "etc inc ltd co corp llc plc jr sr bros dept est a.m p.m u.s u.k u.n e.u ph.d b.a m.a b.sc m.sc al no nos "
    "approx ca fig figs eq eqs vol vols pp ch sec art jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


def words(text: str, *, apostrophes: bool = False) -> list[str]:
    r"""The words of ``text``: ``\w+`` runs (IFEval), or with ``apostrophes=True`` runs joined by apostrophes."""
    return (_WORD_APOSTROPHE if apostrophes else _WORD).findall(text)


def count_words(text: str, *, apostrophes: bool = False) -> int:
    """Number of words, counted as IFEval counts them (``length_constraints:number_words``)."""
    if not apostrophes and text.isascii():
        return len(text.encode("ascii").translate(_ASCII_WORDS_TABLE).split())
    return len(words(text, apostrophes=apostrophes))


def capital_word_count(text: str) -> int:
    """Number of tokens written in capitals (``change_case:capital_word_frequency``).

    IFEval tokenizes with ``nltk.word_tokenize`` and counts tokens for which ``str.isupper()`` holds; hyphenated
    words count once. Tokens here are ``\\w+`` runs joined by hyphens, which gives the same count on ordinary
    text (``"I"`` counts, ``"2023"`` does not).
    """
    if text.isascii():
        # Runs of two or more hyphens separate tokens; a single hyphen joins words or is uncased at a token's edge.
        chunks = text.encode("ascii").translate(_ASCII_CAPITALS_TABLE).replace(b"--", b"  ").split()
        return sum(map(bytes.isupper, chunks))
    return sum(map(str.isupper, _CAPITAL_TOKEN.findall(text)))


def _is_line_start(text: str, pos: int) -> bool:
    """Whether only spaces separate ``pos`` from the start of its line."""
    line_start = text.rfind("\n", 0, pos) + 1
    return not text[line_start:pos].strip()


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    """Whether terminal punctuation ``match`` (at the end of a token) ends a sentence."""
    nxt = _NEXT_CHAR.match(text, match.end()).group(1)  # type: ignore[union-attr]
    if not nxt:  # end of text
        return True
    term = match.group()
    if term != ".":
        term = term.rstrip(_CLOSERS)
        if "?" in term or "!" in term:
            return True
        if term != ".":  # ellipsis ("..", "...", "\u2026"): ends a sentence only before a capitalised word
            return nxt.isupper()
    # The token before the period: back to the previous space or line break (or other whitespace, rarely).
    start = match.start()
    token_start = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start)) + 1
    prev = text[token_start:start]
    if not prev.isprintable():  # a tab or another separator inside the window
        prev = (prev.rsplit(None, 1) or [""])[-1]
        token_start = start - len(prev)
    bare = prev.lstrip(_OPENERS).lower()
    if not bare:
        return True
    if bare in _NEVER_FINAL:
        return False
    if bare in _MAYBE_FINAL or ("." in bare and _DOTTED_ACRONYM.fullmatch(bare)):
        return nxt.isupper()
    if len(bare) == 1 and bare.isalpha():  # an initial: "J. R. R. Tolkien"
        return False
    if bare.isdigit() and _is_line_start(text, token_start):  # a numbered-list marker: "1. First"
        return False
    return True


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text`` (unstripped; pieces without letters or digits dropped)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _TERMINAL.finditer(text):
        if _is_boundary(text, match):
            end = match.end()
            if _ALNUM.search(text, start, end):
                spans.append((start, end))
            start = end
    if _ALNUM.search(text, start):
        spans.append((start, len(text)))
    return spans


def split_sentences(text: str, *, split_on_blank_lines: bool = False) -> list[str]:
    """Split ``text`` into sentences without downloaded data (a Punkt-like rule set; IFEval uses Punkt).

    Rules:

    1. A sentence can end only at a token that ends in terminal punctuation (``.``, ``?``, ``!``, ``\u2026``, in
       any run such as ``?!`` or ``!!!``), optionally followed by closing quotes, brackets or markdown ``*``/``_``,
       and then whitespace or the end of the text. Punctuation inside a token never ends a sentence: decimals
       (``3.14``), web addresses (``example.com``), ``e.g.,``.
    2. A run containing ``?`` or ``!`` always ends a sentence.
    3. An ellipsis (``..``, ``...``, ``\u2026``) ends a sentence only when the next word starts with a capital
       (``"I think... maybe"`` is one sentence, ``"Wait... Then it rang."`` two).
    4. A single period after a title or connective abbreviation (``Mr.``, ``Dr.``, ``Prof.``, ``St.``, ``e.g.``,
       ``i.e.``, ``cf.``, ``vs.``) never ends a sentence; after an abbreviation that may also end one (``etc.``,
       ``Inc.``, ``Ltd.``, ``Jr.``, ``No.``, ``Fig.``, ``a.m.``, ``p.m.``, ``U.S.``, any dotted acronym) it does
       only when the next word starts with a capital ("My answer is no. I am sure." is two sentences, "No. 5" and
       "etc. and" continue); after a single letter (an initial, ``J. K. Rowling``) it does not;
       after a number at the start of a line (a numbered-list marker, ``1. First``) it does not. Any other
       period followed by whitespace ends a sentence, whatever the case of the next word (as Punkt).
    5. The text at the end of the input is a sentence even without final punctuation. Pieces without any letter
       or digit (a lone ``***``, ``...``) are not sentences.
    6. Line breaks do not end sentences (as Punkt); ``split_on_blank_lines=True`` also splits at blank lines,
       for text made of unpunctuated headings or list items.

    Returns the stripped sentences, in order.
    """
    chunks = _BLANK_LINE.split(text) if split_on_blank_lines else (text,)
    return [chunk[start:end].strip() for chunk in chunks for start, end in _sentence_spans(chunk)]


def count_sentences(text: str, *, split_on_blank_lines: bool = False) -> int:
    """Number of sentences per :func:`split_sentences` (``length_constraints:number_sentences``)."""
    chunks = _BLANK_LINE.split(text) if split_on_blank_lines else (text,)
    return sum(len(_sentence_spans(chunk)) for chunk in chunks)


_STAR_DIVIDER = re.compile(r"\s?\*\*\*\s?")


def split_star_paragraphs(text: str) -> list[str]:
    r"""Raw chunks of ``text`` between markdown dividers ``***`` (IFEval splits on ``\s?\*\*\*\s?``).

    Chunks are not stripped and empty chunks are kept: IFEval ignores an empty first or last chunk but treats an
    empty chunk in the middle (two dividers in a row) as a failure.
    """
    return _STAR_DIVIDER.split(text)


def split_blank_line_paragraphs(text: str) -> list[str]:
    r"""Raw chunks of ``text`` between ``\n\n`` (IFEval's split for ``nth_paragraph_first_word``), empties kept."""
    return text.split("\n\n")


_FIRST_WORD_STOP = frozenset(".,?!'\"")


def paragraph_first_word(paragraph: str) -> str:
    """The first word of a paragraph as IFEval reads it: lower-cased, leading quotes dropped, cut at punctuation.

    The first whitespace-separated token loses leading ``'`` and ``"``, then is cut before its first ``.``, ``,``,
    ``?``, ``!``, ``'`` or ``"``: ``'"Hello," she said'`` gives ``hello``; ``"It's"`` gives ``it``.
    """
    tokens = paragraph.split(maxsplit=1)
    if not tokens:
        return ""
    token = tokens[0].lstrip("'").lstrip('"')
    for i, ch in enumerate(token):
        if ch in _FIRST_WORD_STOP:
            token = token[:i]
            break
    return token.lower()


class ResponseText:
    """One response with lazily computed, cached views shared by every verifier that checks it.

    ``text`` is the response exactly as given; ``lower``, ``stripped``, ``n_words``, ``n_sentences`` and
    ``n_capital_words`` are computed on first use.
    """

    __slots__ = ("text", "_lower", "_stripped", "_n_words", "_n_sentences", "_n_capital_words")

    def __init__(self, text: str) -> None:
        self.text = text
        self._lower: str | None = None
        self._stripped: str | None = None
        self._n_words: int | None = None
        self._n_sentences: int | None = None
        self._n_capital_words: int | None = None

    def __repr__(self) -> str:
        return f"ResponseText({self.text!r})"

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower

    @property
    def stripped(self) -> str:
        if self._stripped is None:
            self._stripped = self.text.strip()
        return self._stripped

    @property
    def n_words(self) -> int:
        if self._n_words is None:
            self._n_words = count_words(self.text)
        return self._n_words

    @property
    def n_sentences(self) -> int:
        if self._n_sentences is None:
            self._n_sentences = count_sentences(self.text)
        return self._n_sentences

    @property
    def n_capital_words(self) -> int:
        if self._n_capital_words is None:
            self._n_capital_words = capital_word_count(self.text)
        return self._n_capital_words
