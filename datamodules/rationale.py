"""Rationale-annotated classification data for UNIREX (Chan et al., ICML 2022): ERASER folders and SST-style JSONL.

UNIREX trains a rationale extractor (which input tokens matter) with a task model, optionally supervised by gold
rationales. This module reads the examples, aligns word-level gold rationales to subword tokens and batches them.

Inputs:

- **ERASER** folder: ``train.jsonl`` (required), ``val.jsonl``, ``test.jsonl`` of annotations, and documents in
  ``docs.jsonl`` (``{"docid", "document"}``; preferred when both exist) or ``docs/<docid>`` text files. A document's
  words are its text split on whitespace; evidence spans index those words (``end_token`` exclusive) and their union
  is the gold rationale. The documents of an annotation are its ``docids`` (if a non-empty list), else its
  evidences' docids in order of first appearance, else the ``annotation_id`` (Movies). e-SNLI pairs
  ``<id>_premise`` / ``<id>_hypothesis`` are both kept, premise first, even when the evidence names only one.
  CoS-E (multiple choice): the document is the question, ``query`` holds the options separated by ``[sep]`` and
  ``classification`` is the right option's text. MultiRC: ``query`` is ``question || answer``, kept verbatim.
- **SST-style** JSONL (or JSON / Parquet via ``records.read_file``): ``text`` (words = ``text.split()``) or
  ``tokens`` (a list of words), ``label`` (class index or class name), optional ``rationale`` (0/1 per word),
  optional ``query``, optional ``id`` (default ``<file>:<line>``).

Every bad input raises :class:`DataError` while reading, naming the annotation id and/or ``file:line``.

Token layout of one row (specials that the tokenizer lacks are skipped)::

    [head] doc_1 [sep] (doc_2 [sep] ...) (query [sep])       classification
    [head] question [sep] option [sep]                       multiple choice, one row per option

``head`` = CLS, else BOS; ``sep`` = SEP, else EOS. Each document is its words joined by single spaces, tokenized
without specials, with offsets; a subword belongs to the word holding the first non-space character of its offset
span (a span of spaces only goes to the next word) and is gold iff its word is. ``token_type_ids`` (only when the
tokenizer uses them) are 0 up to the last document's sep and 1 on the query / option segment. ``max_length``
counts all tokens; ``truncation="truncate"`` cuts document subwords from the end, longest document first (in
multiple choice, to fit the longest option, so every option row holds the same document tokens), the query is
kept; ``"drop"`` drops the example; ``"error"`` raises.

Batches (right padding with ``tok.pad_token_id``; ``C`` = options, only for multiple choice)::

    input_ids       int64 (B, T) or (B, C, T)
    attention_mask  int64 (B, T) or (B, C, T)   1 on real tokens
    token_type_ids  int64 (B, T) or (B, C, T)   only when the tokenizer uses them
    candidate_mask  bool  (B, T) or (B, C, T)   document subwords: what an extractor may select
    rationale       float (B, T) or (B, C, T)   1.0 on gold rationale subwords
    has_rationale   bool  (B,)                  a gold rationale subword survives in the input
    labels          int64 (B,)                  class index; multiple choice: index of the right option
    word_ids        int64 (B, T)                the document word of each subword of the first row (counted across
                                                documents, one unused id between two), -1 elsewhere (the document
                                                sits at the same positions in every option row): ERASER scores
                                                rationales per word
    ids             list[str]                   annotation ids
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn

from core.chat import TokenizerFromModule
from core.errors import ConfigError, DataError
from core.records import as_list, inferred_class_count, iter_jsonl, read_file, read_text
from datamodules.loaders import SplitLoaders

SPLITS = ("train", "val", "test")
Truncation = Literal["truncate", "drop", "error"]
OPTION_SEP = "[sep]"


class RationaleRow(NamedTuple):
    """One example as read: words per document, word-level gold rationale, query / options and label."""

    id: str
    docs: list[list[str]]  # words of each document (e-SNLI: premise, hypothesis)
    rationale: list[list[int]] | None  # 0/1 per word of each document; None = not annotated
    query: str | None  # the query segment (None: none); unused in multiple choice
    options: list[str] | None  # multiple choice: the answer options
    label: int | str  # class index or class name; multiple choice: index of the right option
    where: str  # "file:line" (with the annotation id for ERASER) for error messages


class RationaleExample(NamedTuple):
    """One tokenized example: one token row per option (a single row unless multiple choice). Plain lists: pickles."""

    id: str
    input_ids: list[list[int]]  # (C, T_c)
    token_type_ids: list[list[int]] | None  # (C, T_c), only when the tokenizer uses them
    candidate: list[list[int]]  # (C, T_c) 1 on document subwords
    rationale: list[list[int]]  # (C, T_c) 1 on gold rationale subwords
    word_ids: list[int]  # (T_0,) word of each subword of row 0 (across documents, a gap id between two); -1 elsewhere
    has_rationale: bool
    label: int


@dataclass
class TruncationStats:
    """What ``max_length`` cost one split: examples cut or dropped, gold rationale subwords lost."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    rationale_tokens_lost: int = 0


# ------------------------------------------------------------------------------------------------ ERASER
class DocumentStore:
    """The documents of an ERASER folder by docid: ``docs.jsonl`` read once, or ``docs/<docid>`` read on demand."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._docs: dict[str, str] | None = None
        self._cache: dict[str, list[str] | None] = {}
        jsonl, self.docs_dir = self.folder / "docs.jsonl", self.folder / "docs"
        if jsonl.exists():
            self._docs = {}
            for lineno, row in iter_jsonl(jsonl):
                docid, doc = row.get("docid"), row.get("document")
                if isinstance(doc, list) and all(isinstance(s, str) for s in doc):
                    doc = "\n".join(doc)
                if not isinstance(docid, str) or not isinstance(doc, str):
                    raise DataError(f"{jsonl}:{lineno}: expected string fields 'docid' and 'document'")
                self._docs[docid] = doc
        elif not self.docs_dir.is_dir():
            raise DataError(f"{self.folder}: no documents (expected docs.jsonl or a docs/ folder)")

    def words(self, docid: str) -> list[str] | None:
        """The document's whitespace tokens, or None if there is no such document."""
        if docid not in self._cache:
            if self._docs is not None:
                text = self._docs.get(docid)
            else:
                path = self.docs_dir / docid
                ok = Path(docid).name == docid and path.is_file()  # no path tricks in a docid
                text = read_text(path) if ok else None
            self._cache[docid] = None if text is None else text.split()
        return self._cache[docid]

    def __contains__(self, docid: str) -> bool:
        return self.words(docid) is not None


_ESNLI = ("_premise", "_hypothesis")


def _annotation_docids(ann: dict[str, Any], evidences: list[dict[str, Any]], aid: str, store: DocumentStore,
                       where: str) -> list[str]:
    """The docids of an annotation in segment order (rules in the module docstring)."""
    given = ann.get("docids")
    if isinstance(given, list) and given:
        docids = [str(d) for d in given]
    else:
        docids = list(dict.fromkeys(str(ev["docid"]) for ev in evidences))
        if not docids:
            docids = [aid] if aid in store or f"{aid}_premise" not in store else [f"{aid}_premise"]
    if all(d.endswith(_ESNLI) for d in docids):  # e-SNLI: both sentences, premise first
        stems = {d.rsplit("_", 1)[0] for d in docids}
        if len(stems) == 1:
            stem = stems.pop()
            docids = [stem + s for s in _ESNLI if stem + s in docids or stem + s in store]
    for d in docids:
        words = store.words(d)
        if words is None:
            raise DataError(f"{where}: annotation {aid!r}: docid {d!r} has no document in {store.folder}")
        if not words:
            raise DataError(f"{where}: annotation {aid!r}: document {d!r} is empty")
    return docids


def _evidence_list(ann: dict[str, Any], aid: str, where: str) -> list[dict[str, Any]]:
    """The evidence dicts of all groups, flattened (a bare dict in the outer list counts as a group of one)."""
    groups = ann.get("evidences") or []
    if not isinstance(groups, list):
        raise DataError(f"{where}: annotation {aid!r}: 'evidences' must be a list of groups")
    out = []
    for group in groups:
        for ev in [group] if isinstance(group, dict) else group if isinstance(group, list) else [None]:
            if not isinstance(ev, dict) or "docid" not in ev:
                raise DataError(f"{where}: annotation {aid!r}: each evidence must be an object with a 'docid'")
            out.append(ev)
    return out


def _options(query: Any, aid: str, where: str) -> list[str]:
    if not isinstance(query, str):
        raise DataError(f"{where}: annotation {aid!r}: multiple choice needs the options in 'query' ([sep]-separated)")
    options = [o.strip() for o in query.split(OPTION_SEP)]
    if len(options) < 2 or not all(options):
        raise DataError(f"{where}: annotation {aid!r}: query {query!r} does not hold two or more non-empty "
                        f"options separated by {OPTION_SEP!r}")
    return options


def read_eraser(folder: str | Path, split: str, multiple_choice: bool | None = None,
                store: DocumentStore | None = None) -> list[RationaleRow] | None:
    """The annotations of ``<folder>/<split>.jsonl`` as rows, or None when that file is absent.

    ``multiple_choice=None`` takes it as multiple choice when any annotation's query contains ``[sep]``.
    """
    path = Path(folder) / f"{split}.jsonl"
    if not path.exists():
        return None
    store = store or DocumentStore(folder)
    anns = list(iter_jsonl(path))
    if multiple_choice is None:
        multiple_choice = any(OPTION_SEP in str(a.get("query") or "") for _, a in anns)
    rows = []
    for lineno, ann in anns:
        where = f"{path}:{lineno}"
        if ann.get("annotation_id") is None:
            raise DataError(f"{where}: missing field 'annotation_id'")
        aid = str(ann["annotation_id"])
        evidences = _evidence_list(ann, aid, where)
        docids = _annotation_docids(ann, evidences, aid, store, where)
        docs = [store.words(d) or [] for d in docids]
        rationale = [[0] * len(words) for words in docs] if evidences else None
        for ev in evidences:
            docid = str(ev["docid"])
            if docid not in docids:
                raise DataError(f"{where}: annotation {aid!r}: evidence docid {docid!r} is not among its "
                                f"documents {docids}")
            words = docs[docids.index(docid)]
            start, end = ev.get("start_token"), ev.get("end_token")
            if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= len(words):
                raise DataError(f"{where}: annotation {aid!r}: evidence span [{start}, {end}) is outside document "
                                f"{docid!r} of {len(words)} tokens (expected 0 <= start_token < end_token <= "
                                f"{len(words)})")
            for i in range(start, end):
                rationale[docids.index(docid)][i] = 1  # type: ignore[index]
        label = ann.get("classification")
        if label is None:
            raise DataError(f"{where}: annotation {aid!r}: missing field 'classification'")
        if isinstance(label, bool):
            label = str(label)
        if not isinstance(label, (str, int)):
            raise DataError(f"{where}: annotation {aid!r}: 'classification' must be a string, got {label!r}")
        query = ann.get("query")
        options = None
        if multiple_choice:
            options = _options(query, aid, where)
            if str(label).strip() not in options:
                raise DataError(f"{where}: annotation {aid!r}: classification {label!r} is not one of the options "
                                f"{options}")
            label, query = options.index(str(label).strip()), None
        elif query is not None and not isinstance(query, str):
            raise DataError(f"{where}: annotation {aid!r}: 'query' must be a string, got {type(query).__name__}")
        rows.append(RationaleRow(aid, docs, rationale, query or None, options, label, f"{where} (annotation {aid!r})"))
    if multiple_choice:
        check_num_options(rows)
    return rows


def check_num_options(rows: list[RationaleRow], expected: int | None = None) -> int:
    """Every multiple-choice row has the same number of options (``expected``, else the first row's)."""
    count = expected if expected is not None else len(rows[0].options or []) if rows else 0
    for r in rows:
        if len(r.options or []) != count:
            raise DataError(f"{r.where}: {len(r.options or [])} options, expected {count} like the other rows")
    return count


# ----------------------------------------------------------------------------------------------- SST-style
def _sst_words(row: dict[str, Any], text_field: str, tokens_field: str, where: str) -> list[str]:
    if row.get(tokens_field) is not None:
        tokens = row[tokens_field]
        if not isinstance(tokens, list) or not tokens:
            raise DataError(f"{where}: field {tokens_field!r} must be a non-empty list of words")
        for i, t in enumerate(tokens):
            if not isinstance(t, str) or not t or t.split() != [t]:
                raise DataError(f"{where}: field {tokens_field!r}[{i}] = {t!r} is not a word (a non-empty string "
                                "without whitespace)")
        return list(tokens)
    if row.get(text_field) is None:
        raise DataError(f"{where}: missing field {text_field!r} or {tokens_field!r} (fields here: "
                        f"{', '.join(map(str, row))})")
    text = row[text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: field {text_field!r} is empty")
    return text.split()


def _sst_rationale(value: Any, n_words: int, field_name: str, where: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n_words:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: field {field_name!r} must be a list of {n_words} values (one per word), got {got}")
    for i, v in enumerate(value):
        if not isinstance(v, int) or v not in (0, 1):  # bools are ints
            raise DataError(f"{where}: field {field_name!r}[{i}] = {v!r} (expected 0 or 1)")
    return [int(v) for v in value]


def read_sst(files: list[str] | str, text_field: str = "text", tokens_field: str = "tokens",
             label_field: str = "label", rationale_field: str = "rationale",
             query_field: str = "query") -> list[RationaleRow]:
    """Rows of SST-style files (fields in the module docstring); a bad row raises naming ``file:line`` and field."""
    rows = []
    for f in as_list(files):
        for row, where in read_file(f):
            words = _sst_words(row, text_field, tokens_field, where)
            label = row.get(label_field)
            if label is None:
                raise DataError(f"{where}: missing field {label_field!r} (label_field)")
            if isinstance(label, bool):
                label = str(label)
            if not isinstance(label, (int, str)) or (isinstance(label, str) and not label.strip()):
                raise DataError(f"{where}: field {label_field!r} must be a class index (int) or a class name "
                                f"(string), got {label!r}")
            query = row.get(query_field)
            if query is not None and not isinstance(query, str):
                raise DataError(f"{where}: field {query_field!r} must be a string, got {type(query).__name__}")
            rationale = _sst_rationale(row.get(rationale_field), len(words), rationale_field, where)
            rid = str(row["id"]) if row.get("id") is not None else where
            rows.append(RationaleRow(rid, [words], None if rationale is None else [rationale],
                                     query if query and query.strip() else None, None, label, where))
    return rows


# ------------------------------------------------------------------------------------------------ labels
def resolve_label_names(train: list[RationaleRow], labels: list[str] | None) -> list[str]:
    """``labels`` if given; else ``0..max`` when every training label is an int, else the sorted label strings."""
    if labels is not None:
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"labels must be two or more distinct class names, got {labels}")
        return [str(x) for x in labels]
    if all(isinstance(r.label, int) for r in train):
        count = inferred_class_count(((r.label, r.where) for r in train), "label",
                                     "pass `labels` to name classes that training lacks")
        names = [str(i) for i in range(count)]
    else:
        names = sorted({r.label.strip() for r in train if isinstance(r.label, str)})
    if len(names) < 2:
        raise DataError(f"{train[0].where}: the training labels give {len(names)} class ({names}); classification "
                        "needs two or more (pass `labels` to name them)")
    return names


def label_index(row: RationaleRow, names: list[str]) -> int:
    """The class index of a row: an int label is the index itself, a string is looked up in ``names``."""
    if isinstance(row.label, int):
        if not 0 <= row.label < len(names):
            raise DataError(f"{row.where}: label {row.label} is not a class index in [0, {len(names)})")
        return row.label
    label = row.label.strip()
    if label not in names:
        raise DataError(f"{row.where}: label {row.label!r} is not among the classes {names}")
    return names.index(label)


# -------------------------------------------------------------------------------------------- tokenizing
def align_words(tokenizer: Any, words: list[str]) -> tuple[list[int], list[int]]:
    """Subword ids of ``" ".join(words)`` (no specials) and the index of the word each subword belongs to.

    A subword's word holds the first non-space character of its offset span; a span of spaces only (or an empty
    span) goes to the word that starts at or after it. Needs a fast tokenizer (offsets).
    """
    text = " ".join(words)
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    word_of = []
    for begin, end in enc["offset_mapping"]:
        inside = text[begin:end]
        stripped = len(inside) - len(inside.lstrip())
        if stripped < len(inside):
            word_of.append(bisect.bisect_right(starts, begin + stripped) - 1)
        else:
            word_of.append(min(bisect.bisect_left(starts, begin), len(words) - 1))
    return list(enc["input_ids"]), word_of


def cut_longest_first(lengths: list[int], budget: int) -> list[int]:
    """New lengths summing to at most ``budget``: the longest is shortened first (ties: the earlier one)."""
    out = list(lengths)
    while sum(out) > budget:
        i = max(range(len(out)), key=lambda j: (out[j], -j))
        second = max((n for j, n in enumerate(out) if j != i), default=0)
        out[i] -= max(1, min(out[i] - second, sum(out) - budget))
    return out


class RationaleEncoder:
    """Rows -> :class:`RationaleExample` with the layout and truncation of the module docstring."""

    def __init__(self, tokenizer: Any, max_length: int, truncation: Truncation = "truncate") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer: subword-to-word alignment of "
                              "rationales needs offset mappings (use a tokenizers-backed `...TokenizerFast`)")
        self.tok, self.max_length, self.truncation = tokenizer, max_length, truncation
        head = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.head: list[int] = [] if head is None else [head]
        self.sep: list[int] = [] if sep is None else [sep]
        self.uses_types = "token_type_ids" in tokenizer.model_input_names

    def plain(self, text: str) -> list[int]:
        """Ids of a query / option (words joined by single spaces, no specials)."""
        return list(self.tok(" ".join(text.split()), add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def encode(self, row: RationaleRow, label: int, stats: TruncationStats) -> RationaleExample | None:
        """The example, or None when ``truncation="drop"`` drops it; counts into ``stats``."""
        stats.examples += 1
        docs = [align_words(self.tok, words) for words in row.docs]  # (ids, word index) per document
        gold = [[row.rationale[d][w] if row.rationale else 0 for w in word_of]
                for d, (_, word_of) in enumerate(docs)]
        for d, (ids, _) in enumerate(docs):
            if not ids:
                raise DataError(f"{row.where}: document {d} tokenizes to no tokens")
        tails = [self.plain(o) for o in row.options] if row.options else [self.plain(row.query)] if row.query else []
        fixed = len(self.head) + len(self.sep) * (len(docs) + bool(tails)) + max(map(len, tails), default=0)
        budget, total = self.max_length - fixed, sum(len(ids) for ids, _ in docs)
        if total > budget:
            if self.truncation == "drop":
                stats.dropped += 1
                stats.rationale_tokens_lost += sum(map(sum, gold))
                return None
            if self.truncation == "error" or budget < len(docs):
                why = (f"the query / options and special tokens take {fixed} of max_length={self.max_length}, "
                       "leaving no room for the document" if budget < len(docs) else
                       f"{total + fixed} tokens exceed max_length={self.max_length}")
                raise DataError(f"{row.where}: example {row.id!r}: {why} (truncation={self.truncation!r})")
            keep = cut_longest_first([len(ids) for ids, _ in docs], budget)
            stats.truncated += 1
            stats.rationale_tokens_lost += sum(sum(g[k:]) for g, k in zip(gold, keep, strict=True))
            docs = [(ids[:k], word_of[:k]) for (ids, word_of), k in zip(docs, keep, strict=True)]
            gold = [g[:k] for g, k in zip(gold, keep, strict=True)]
        # the shared document part: [head] doc_1 [sep] doc_2 [sep] ...
        n_head, offset = len(self.head), 0
        ids, cand, rat, word_ids = list(self.head), [0] * n_head, [0] * n_head, [-1] * n_head
        for (doc_ids, word_of), g, words in zip(docs, gold, row.docs, strict=True):
            ids += doc_ids + self.sep
            cand += [1] * len(doc_ids) + [0] * len(self.sep)
            rat += g + [0] * len(self.sep)
            word_ids += [offset + w for w in word_of] + [-1] * len(self.sep)
            offset += len(words) + 1  # a gap id between documents: a word-level span never joins two documents
        rows_ids, rows_types, rows_cand, rows_rat = [], [], [], []
        for tail in tails or [[]]:
            extra = tail + self.sep if tails else []
            rows_ids.append(ids + extra)
            rows_types.append([0] * len(ids) + [1] * len(extra))
            rows_cand.append(cand + [0] * len(extra))
            rows_rat.append(rat + [0] * len(extra))
        has_rationale = row.rationale is not None and any(rat)
        return RationaleExample(row.id, rows_ids, rows_types if self.uses_types else None, rows_cand, rows_rat,
                                word_ids + [-1] * (len(rows_ids[0]) - len(word_ids)), has_rationale, label)


# ------------------------------------------------------------------------------------------------ batches
def collate_rationale(examples: list[RationaleExample], pad_id: int, multiple_choice: bool = False) -> dict[str, Any]:
    """Right-padded tensors of the batch contract in the module docstring."""
    num_rows = {len(e.input_ids) for e in examples}
    if len(num_rows) != 1:
        raise ValueError(f"examples with different numbers of options in one batch: {sorted(num_rows)}")
    b, c = len(examples), num_rows.pop()
    t = max(len(r) for e in examples for r in e.input_ids)
    ids = torch.full((b, c, t), pad_id, dtype=torch.long)  # (B, C, T)
    mask = torch.zeros(b, c, t, dtype=torch.long)  # (B, C, T)
    types = torch.zeros(b, c, t, dtype=torch.long)  # (B, C, T)
    cand = torch.zeros(b, c, t, dtype=torch.bool)  # (B, C, T)
    rat = torch.zeros(b, c, t, dtype=torch.float32)  # (B, C, T)
    for i, e in enumerate(examples):
        for j, row in enumerate(e.input_ids):
            n = len(row)
            ids[i, j, :n] = torch.tensor(row)
            mask[i, j, :n] = 1
            cand[i, j, :n] = torch.tensor(e.candidate[j], dtype=torch.bool)
            rat[i, j, :n] = torch.tensor(e.rationale[j], dtype=torch.float32)
            if e.token_type_ids is not None:
                types[i, j, :n] = torch.tensor(e.token_type_ids[j])
    word_ids = torch.full((b, t), -1, dtype=torch.long)  # (B, T): document words are the same in every option row
    for i, e in enumerate(examples):
        word_ids[i, : len(e.word_ids)] = torch.tensor(e.word_ids, dtype=torch.long)
    tensors = {"input_ids": ids, "attention_mask": mask, "candidate_mask": cand, "rationale": rat}
    if examples[0].token_type_ids is not None:
        tensors["token_type_ids"] = types
    if not multiple_choice:
        tensors = {k: v.squeeze(1) for k, v in tensors.items()}  # (B, T)
    return {
        **tensors,
        "has_rationale": torch.tensor([e.has_rationale for e in examples], dtype=torch.bool),  # (B,)
        "labels": torch.tensor([e.label for e in examples], dtype=torch.long),  # (B,)
        "word_ids": word_ids,
        "ids": [e.id for e in examples],
    }


# -------------------------------------------------------------------------------------------- datamodule
class RationaleDataModule(TokenizerFromModule, SplitLoaders, LightningDataModule):
    """Rationale-annotated classification (ERASER or SST-style) for UNIREX; batches in the module docstring.

    Args:
        eraser_dir: an ERASER folder; or ``train_files`` / ``val_files`` / ``test_files``: SST-style files.
            Exactly one of ``eraser_dir`` and ``train_files``.
        text_field, tokens_field, label_field, rationale_field, query_field: SST-style field names.
        labels: class names in index order; None: ``0..max`` if every training label is an int, else the sorted
            training label strings.
        multiple_choice: None = auto (ERASER rows whose query holds ``[sep]`` options, CoS-E).
        max_length: tokens per row, specials included; ``truncation`` says what to do with longer examples.
        tokenizer: model name whose tokenizer to use; None takes the LightningModule's ``.tokenizer``.

    After ``setup``: ``num_labels`` (options in multiple choice), ``label_names``, ``num_choices``, ``datasets``
    (split -> examples) and ``truncation_stats`` (split -> :class:`TruncationStats`).
    """

    def __init__(
        self,
        eraser_dir: str | None = None,
        train_files: list[str] | str | None = None,
        val_files: list[str] | str | None = None,
        test_files: list[str] | str | None = None,
        text_field: str = "text",
        tokens_field: str = "tokens",
        label_field: str = "label",
        rationale_field: str = "rationale",
        query_field: str = "query",
        labels: list[str] | None = None,
        multiple_choice: bool | None = None,
        max_length: int = 256,
        truncation: Truncation = "truncate",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        tokenizer: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if (eraser_dir is None) == (train_files is None):
            raise ConfigError("give exactly one of eraser_dir (an ERASER folder) and train_files (SST-style files)")
        if eraser_dir is not None and (val_files is not None or test_files is not None):
            raise ConfigError("val_files / test_files go with train_files; an ERASER folder holds its own splits")
        if eraser_dir is None and multiple_choice:
            raise ConfigError("multiple_choice needs an ERASER folder (CoS-E style [sep]-separated options)")
        if truncation not in ("truncate", "drop", "error"):
            raise ConfigError(f"truncation must be 'truncate', 'drop' or 'error', got {truncation!r}")
        if max_length < 4:
            raise ConfigError(f"max_length must be >= 4, got {max_length}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("batch_size and eval_batch_size must be >= 1")
        self._datasets: dict[str, list[RationaleExample]] | None = None
        self._label_names: list[str] = []
        self._num_choices: int | None = None
        self.truncation_stats: dict[str, TruncationStats] = {}

    def read_rows(self) -> dict[str, list[RationaleRow]]:
        """The rows of each present split (train required), validated and with one multiple-choice setting."""
        h = self.hparams
        rows: dict[str, list[RationaleRow]] = {}
        if h.eraser_dir is not None:
            if not (Path(h.eraser_dir) / "train.jsonl").exists():
                raise DataError(f"{Path(h.eraser_dir) / 'train.jsonl'}: no such file (the train split is required)")
            store = DocumentStore(h.eraser_dir)
            mc = h.multiple_choice
            for split in SPLITS:
                split_rows = read_eraser(h.eraser_dir, split, mc, store)
                if split_rows is not None:
                    rows[split] = split_rows
                    mc = any(r.options is not None for r in split_rows) if mc is None else mc
        else:
            fields = dict(text_field=h.text_field, tokens_field=h.tokens_field, label_field=h.label_field,
                          rationale_field=h.rationale_field, query_field=h.query_field)
            for split, files in zip(SPLITS, (h.train_files, h.val_files, h.test_files), strict=True):
                if files is not None:
                    rows[split] = read_sst(files, **fields)
        if not rows["train"]:
            raise DataError(f"{h.eraser_dir or h.train_files}: no training rows")
        if rows["train"][0].options is not None:
            count = check_num_options(rows["train"])
            for split_rows in rows.values():
                check_num_options(split_rows, count)
        return rows

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        h = self.hparams
        rows = self.read_rows()
        encoder = RationaleEncoder(self.tokenizer, h.max_length, h.truncation)
        if rows["train"][0].options is not None:
            self._num_choices = len(rows["train"][0].options)
            self._label_names = [str(i) for i in range(self._num_choices)]
        else:
            self._label_names = resolve_label_names(rows["train"], h.labels)
        datasets = {}
        for split, split_rows in rows.items():
            stats = self.truncation_stats[split] = TruncationStats()
            examples = [encoder.encode(r, label_index(r, self._label_names), stats) for r in split_rows]
            datasets[split] = [e for e in examples if e is not None]
            if stats.truncated or stats.dropped:
                rank_zero_warn(f"{split}: {stats.truncated} of {stats.examples} examples cut and {stats.dropped} "
                               f"dropped at max_length={h.max_length}; {stats.rationale_tokens_lost} gold rationale "
                               "tokens lost")
            if split == "train" and not datasets[split]:
                raise DataError(f"{h.eraser_dir or h.train_files}: every training example was dropped "
                                f"(max_length={h.max_length})")
        self._datasets = datasets

    def _loaded(self) -> dict[str, list[RationaleExample]]:
        if self._datasets is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run yet")
        return self._datasets

    @property
    def datasets(self) -> dict[str, list[RationaleExample]]:
        return self._loaded()

    @property
    def num_choices(self) -> int | None:
        self._loaded()
        return self._num_choices

    @property
    def label_names(self) -> list[str]:
        self._loaded()
        return list(self._label_names)

    @property
    def num_labels(self) -> int:
        self._loaded()
        return len(self._label_names)

    def _collate(self) -> partial:
        return partial(collate_rationale, pad_id=self.tokenizer.pad_token_id,
                       multiple_choice=self._num_choices is not None)
