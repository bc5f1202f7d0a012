"""Rationale data (UNIREX): ERASER / SST-style readers, subword alignment, truncation, batches, the synthetic set."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertTokenizerFast

from core.backbones import load_tokenizer
from core.errors import ConfigError, DataError
from datamodules import rationale_synthetic as synth
from datamodules.rationale import (
    RationaleDataModule,
    RationaleEncoder,
    RationaleRow,
    TruncationStats,
    align_words,
    collate_rationale,
    cut_longest_first,
    read_eraser,
    read_sst,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "data" / "rationale" / "synthetic"
MOVIES_QUERY = "What is the sentiment of this review?"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "a", "dull", "mess", "un", "##believ",
         "##ably", "dread", "##ful", "and", "what", "is", "sentiment", "of", "this", "review", "?", "man", "plays",
         "guitar", "person", "music", "where", "keep", "money", "bank", "library", "park", "did", "he", "buy", "car",
         "|", "good"]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_tokenizer("tiny-bert")  # byte-level BPE: bos/eos, no cls/sep, no token_type_ids


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(str(path))  # WordPiece: [CLS] / [SEP] and token_type_ids
    assert tok.is_fast and "token_type_ids" in tok.model_input_names
    return tok


def ids_of(tok: Any, *words: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(words))


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def ann(aid: str, label: Any, spans: list[tuple[str, int, int]] = (), query: str | None = None,
        docids: list[str] | None = None) -> dict[str, Any]:
    """An ERASER annotation with one evidence group per span ``(docid, start, end)``."""
    return {"annotation_id": aid, "classification": label, "query": query, "query_type": None, "docids": docids,
            "evidences": [[{"docid": d, "start_token": s, "end_token": e, "start_sentence": -1, "end_sentence": -1,
                            "text": ""}] for d, s, e in spans]}


def eraser(root: Path, splits: dict[str, list[Any]], docs: dict[str, str], folder: bool = False) -> Path:
    """An ERASER folder: split files plus documents in docs.jsonl or docs/ (one sentence a line)."""
    for split, rows in splits.items():
        write_jsonl(root / f"{split}.jsonl", rows)
    if folder:
        (root / "docs").mkdir(parents=True)
        for docid, text in docs.items():
            (root / "docs" / docid).write_text(text, encoding="utf-8")
    else:
        write_jsonl(root / "docs.jsonl", [{"docid": d, "document": t} for d, t in docs.items()])
    return root


def data(tok: Any, **kwargs: Any) -> RationaleDataModule:
    dm = RationaleDataModule(shuffle=False, **kwargs)
    dm._tokenizer = tok  # what `tokenizer=...` or the LightningModule would give
    dm.setup()
    return dm


def batch_of(dm: RationaleDataModule, split: str = "train") -> dict[str, Any]:
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return next(iter(loader))


# ------------------------------------------------------------------------------------------------ alignment
MOVIE_DOC = "the film was unbelievably dreadful\nand a dull mess"  # two sentence lines, 9 words


@pytest.mark.parametrize("folder", [False, True], ids=["docs.jsonl", "docs-folder"])
def test_eraser_span_alignment_wordpiece_by_hand(tmp_path: Path, bert: Any, folder: bool) -> None:
    # words: 0 the, 1 film, 2 was, 3 unbelievably, 4 dreadful, 5 and, 6 a, 7 dull, 8 mess
    # evidence [3, 5) "unbelievably dreadful" and [7, 9) "dull mess"
    root = eraser(tmp_path, {"train": [ann("negR_001.txt", "NEG", [("negR_001.txt", 3, 5), ("negR_001.txt", 7, 9)],
                                           MOVIES_QUERY),
                                       ann("posR_002.txt", "POS", [], MOVIES_QUERY)]},
                  {"negR_001.txt": MOVIE_DOC, "posR_002.txt": "a good film"}, folder)
    dm = data(bert, eraser_dir=str(root))
    b = batch_of(dm)
    doc = ["the", "film", "was", "un", "##believ", "##ably", "dread", "##ful", "and", "a", "dull", "mess"]
    query = ["what", "is", "the", "sentiment", "of", "this", "review", "?"]
    expected = ids_of(bert, "[CLS]", *doc, "[SEP]", *query, "[SEP]")
    assert b["input_ids"][0].tolist() == expected  # (T,) = 1 + 12 + 1 + 8 + 1 = 23
    gold = [0] * 23
    for p in (4, 5, 6, 7, 8, 11, 12):  # un ##believ ##ably dread ##ful | dull mess
        gold[p] = 1
    assert b["rationale"][0].tolist() == gold
    assert b["candidate_mask"][0].tolist() == [i in range(1, 13) for i in range(23)]
    assert b["token_type_ids"][0].tolist() == [0] * 14 + [1] * 9
    assert dm.datasets["train"][0].word_ids[:13] == [-1, 0, 1, 2, 3, 3, 3, 4, 4, 5, 6, 7, 8]
    # the second row: right-padded, no rationale
    n = len(ids_of(bert, "[CLS]", "a", "good", "film", "[SEP]", *query, "[SEP]"))
    assert b["attention_mask"][1].tolist() == [1] * n + [0] * (23 - n)
    assert b["input_ids"][1, n:].tolist() == [bert.pad_token_id] * (23 - n)
    assert not b["candidate_mask"][1, n:].any() and b["rationale"][1].sum() == 0
    assert b["has_rationale"].tolist() == [True, False]
    assert b["labels"].tolist() == [0, 1] and dm.label_names == ["NEG", "POS"] and dm.num_labels == 2
    assert b["ids"] == ["negR_001.txt", "posR_002.txt"]


def test_alignment_byte_level_bpe_by_hand(tiny: Any) -> None:
    words = ["unbelievably", "dreadful", "film"]
    ids, word_of = align_words(tiny, words)
    assert tiny.convert_ids_to_tokens(ids) == ["un", "b", "el", "i", "e", "v", "ab", "ly", "Ġd", "read", "ful",
                                               "Ġf", "il", "m"]
    assert word_of == [0] * 8 + [1] * 3 + [2] * 3  # "Ġd" starts at the space: its first non-space char is "d"
    row = RationaleRow("r", [words], [[0, 1, 0]], None, None, 0, "x:1")
    ex = RationaleEncoder(tiny, 64).encode(row, 0, TruncationStats())
    assert ex.input_ids == [[tiny.bos_token_id, *ids, tiny.eos_token_id]]  # no query: [bos] doc [eos]
    assert [p for p, r in enumerate(ex.rationale[0]) if r] == [9, 10, 11]  # Ġd read ful
    assert ex.candidate[0] == [0] + [1] * 14 + [0] and ex.token_type_ids is None


def test_space_only_subword_goes_to_the_next_word() -> None:
    class Stub:  # offsets as a byte-level BPE gives them when a bare space is its own token
        def __call__(self, text: str, **kwargs: Any) -> dict[str, Any]:
            assert text == "ab cd"
            return {"input_ids": [1, 2, 3, 4], "offset_mapping": [(0, 2), (2, 3), (3, 5), (5, 5)]}

    assert align_words(Stub(), ["ab", "cd"]) == ([1, 2, 3, 4], [0, 1, 1, 1])


def test_slow_tokenizer_is_a_config_error() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="not a fast tokenizer"):
        RationaleEncoder(Slow(), 32)


# --------------------------------------------------------------------------------------- ERASER task layouts
def test_esnli_two_documents_premise_first(tmp_path: Path, bert: Any) -> None:
    # the evidence names only the hypothesis; both documents are kept, premise first
    root = eraser(tmp_path, {"train": [ann("p1", "entailment", [("p1_hypothesis", 1, 2)]),
                                       ann("p2", "neutral", [("p2_premise", 2, 3)], docids=["p2_hypothesis",
                                                                                          "p2_premise"])]},
                  {"p1_premise": "a man plays guitar", "p1_hypothesis": "a person plays music",
                   "p2_premise": "a man plays guitar", "p2_hypothesis": "a man plays"})
    dm = data(bert, eraser_dir=str(root))
    b = batch_of(dm)
    premise, hypothesis = ["a", "man", "plays", "guitar"], ["a", "person", "plays", "music"]
    assert b["input_ids"][0].tolist() == ids_of(bert, "[CLS]", *premise, "[SEP]", *hypothesis, "[SEP]")
    assert b["rationale"][0].tolist() == [0] * 7 + [1] + [0] * 3  # "person"
    assert b["candidate_mask"][0].tolist() == [False] + [True] * 4 + [False] + [True] * 4 + [False]
    assert b["token_type_ids"][0].tolist() == [0] * 11  # no query: every segment is a document
    assert b["rationale"][1].tolist()[:6] == [0, 0, 0, 1, 0, 0]  # "plays" of the premise, premise still first
    assert dm.label_names == ["entailment", "neutral"]


def test_cose_multiple_choice_shapes_and_labels(tmp_path: Path, bert: Any) -> None:
    q = "bank [sep] library [sep] park"
    root = eraser(tmp_path, {"train": [ann("c1", "bank", [("c1", 3, 4)], q), ann("c2", "park", [], q)],
                             "val": [ann("c3", "library", [("c3", 0, 1)], "park [sep] library [sep] bank")]},
                  {"c1": "where is the money", "c2": "where is a park", "c3": "library ?"})
    dm = data(bert, eraser_dir=str(root))
    assert dm.num_choices == 3 and dm.num_labels == 3
    b = batch_of(dm)
    assert b["input_ids"].shape == b["candidate_mask"].shape == b["rationale"].shape == (2, 3, 8)  # (B, C, T)
    assert b["token_type_ids"].shape == b["attention_mask"].shape == (2, 3, 8)
    assert b["labels"].tolist() == [0, 2]
    question = ["where", "is", "the", "money"]
    for c, option in enumerate(["bank", "library", "park"]):
        assert b["input_ids"][0, c].tolist() == ids_of(bert, "[CLS]", *question, "[SEP]", option, "[SEP]")
        assert b["rationale"][0, c].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # "money", in every option row
        assert b["candidate_mask"][0, c].tolist() == [False] + [True] * 4 + [False] * 3
        assert b["token_type_ids"][0, c].tolist() == [0] * 6 + [1] * 2
    assert b["has_rationale"].tolist() == [True, False]
    assert batch_of(dm, "val")["labels"].tolist() == [1]


def test_multirc_query_segment_is_not_a_candidate(tmp_path: Path, bert: Any) -> None:
    root = eraser(tmp_path, {"train": [ann("m1", "True", [("m1:0", 0, 2)], "what did he buy || a car"),
                                       ann("m2", "False", [], "what did he buy || a man")]},
                  {"m1:0": "a car", "m2": "the man"})
    b = batch_of(data(bert, eraser_dir=str(root)))
    query = ["what", "did", "he", "buy", "|", "|", "a", "car"]  # BERT splits "||"
    assert b["input_ids"][0].tolist() == ids_of(bert, "[CLS]", "a", "car", "[SEP]", *query, "[SEP]")
    assert b["candidate_mask"][0].tolist() == [False, True, True] + [False] * 10
    assert b["token_type_ids"][0].tolist() == [0] * 4 + [1] * 9
    assert b["rationale"][0].tolist() == [0, 1, 1] + [0] * 10
    assert b["labels"].tolist() == [1, 0]  # sorted classes: False, True


# ------------------------------------------------------------------------------------------------ truncation
def test_cut_longest_first() -> None:
    assert cut_longest_first([10, 3], 8) == [5, 3]
    assert cut_longest_first([6, 6], 8) == [4, 4]
    assert cut_longest_first([7, 2, 5], 9) == [3, 2, 4]  # 7->5, then ties: 5,5 -> 4,5 -> 4,4 -> 3,4
    assert cut_longest_first([3, 2], 9) == [3, 2]


def test_truncate_keeps_rationale_on_the_same_words(tmp_path: Path, bert: Any) -> None:
    words = ("the film was unbelievably dreadful and a dull mess " * 3).split()  # 27 words, 36 subwords
    rationale = [int(w in {"unbelievably", "dull"}) for w in words]
    path = write_jsonl(tmp_path / "t.jsonl", [{"tokens": words, "label": 0, "rationale": rationale, "query": "what"},
                                              {"text": "a dull film", "label": 1, "rationale": [0, 1, 0]}])
    full = data(bert, train_files=str(path), max_length=64).datasets["train"][0]
    with pytest.warns(UserWarning, match="1 of 2 examples cut and 0 dropped .* gold rationale tokens lost"):
        dm = data(bert, train_files=str(path), max_length=20)
    ex = dm.datasets["train"][0]
    assert len(ex.input_ids[0]) == 20 and ex.input_ids[0][-3:] == ids_of(bert, "[SEP]", "what", "[SEP]")
    kept = 20 - 4  # [CLS] doc [SEP] what [SEP]
    assert ex.input_ids[0][: 1 + kept] == full.input_ids[0][: 1 + kept]  # cut from the end
    for p, w in enumerate(ex.word_ids):
        assert ex.rationale[0][p] == (w >= 0 and rationale[w] == 1)  # every subword of a gold word, nothing else
    assert ex.rationale[0] == full.rationale[0][: 1 + kept] + [0, 0, 0]
    lost = sum(full.rationale[0]) - sum(ex.rationale[0])
    assert lost > 0 and dm.truncation_stats["train"] == TruncationStats(2, 1, 0, lost)


def test_truncate_drop_and_error(tmp_path: Path, bert: Any) -> None:
    long = {"id": "long-one", "text": "the film was unbelievably dreadful", "label": 0, "rationale": [0, 0, 0, 1, 0]}
    path = write_jsonl(tmp_path / "t.jsonl", [long, {"text": "a dull film", "label": 1}])
    with pytest.warns(UserWarning, match="0 of 2 examples cut and 1 dropped"):
        dm = data(bert, train_files=str(path), max_length=6, truncation="drop")
    assert [e.id for e in dm.datasets["train"]] == [f"{path}:2"]
    assert dm.truncation_stats["train"] == TruncationStats(2, 0, 1, 3)  # un ##believ ##ably
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: example 'long-one': 10 tokens exceed "
                                        r"max_length=6 \(truncation='error'\)"):
        data(bert, train_files=str(path), max_length=6, truncation="error")
    query = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "text": "a film", "label": 0,
                                                "query": "what is the sentiment of this review ?"},
                                               {"text": "a film", "label": 1}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: example 'q1': the query / options .* leaving no room"):
        data(bert, train_files=str(query), max_length=8)


def test_multiple_choice_truncation_fits_the_longest_option(tmp_path: Path, bert: Any) -> None:
    root = eraser(tmp_path, {"train": [ann("c1", "bank", [("c1", 3, 4)], "bank [sep] a dull film [sep] park")]},
                  {"c1": "where is the money"})
    with pytest.warns(UserWarning, match="1 of 1 examples cut"):
        ex = data(bert, eraser_dir=str(root), max_length=8).datasets["train"][0]
    assert [len(r) for r in ex.input_ids] == [6, 8, 6]  # the question cut to 2 tokens in every row
    assert all(r[:4] == ids_of(bert, "[CLS]", "where", "is", "[SEP]") for r in ex.input_ids)
    assert not ex.has_rationale  # "money" was cut


# --------------------------------------------------------------------------------------------- bad inputs
BAD_ERASER = [
    (ann("a1", "NEG", [("a1", -1, 2)]), "evidence span [-1, 2) is outside document 'a1' of 3 tokens"),
    (ann("a1", "NEG", [("a1", 1, 4)]), "evidence span [1, 4) is outside document 'a1' of 3 tokens"),
    (ann("a1", "NEG", [("a1", 2, 2)]), "evidence span [2, 2) is outside"),
    (ann("a1", "NEG", [("nowhere", 0, 1)]), "docid 'nowhere' has no document"),
    (ann("a1", "NEG", [], docids=["empty"]), "document 'empty' is empty"),
    (ann("a1", "NEG", [("a1", 0, 1)], docids=["a2"]), "evidence docid 'a1' is not among its documents"),
    ({"classification": "NEG"}, "missing field 'annotation_id'"),
    (ann("a1", None), "missing field 'classification'"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ERASER)
def test_eraser_errors_name_annotation_and_line(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    good = ann("a0", "POS", [("a0", 0, 1)])
    root = eraser(tmp_path, {"train": [good, row]}, {"a0": "a b c", "a1": "a b c", "a2": "x", "empty": " \n "})
    with pytest.raises(DataError) as err:
        read_eraser(root, "train")
    assert "train.jsonl:2: " in str(err.value) and message in str(err.value)
    if "annotation_id" in row:
        assert "'a1'" in str(err.value)


def test_eraser_more_errors(tmp_path: Path, bert: Any) -> None:
    docs = {"c1": "where is the money", "c2": "where is a park"}
    q3, q2 = "bank [sep] library [sep] park", "bank [sep] park"
    root = eraser(tmp_path / "a", {"train": [ann("c1", "bank", [], q3), ann("c2", "zoo", [], q3)]}, docs)
    with pytest.raises(DataError, match=r"train\.jsonl:2: annotation 'c2': classification 'zoo' is not one of the "
                                        r"options \['bank', 'library', 'park'\]"):
        read_eraser(root, "train")
    root = eraser(tmp_path / "b", {"train": [ann("c1", "bank", [], q3), ann("c2", "park", [], q2)]}, docs)
    with pytest.raises(DataError, match=r"train\.jsonl:2 \(annotation 'c2'\): 2 options, expected 3"):
        read_eraser(root, "train")
    root = eraser(tmp_path / "c", {"train": [ann("c1", "bank", [], q3)], "val": [ann("c2", "park", [], q2)]}, docs)
    with pytest.raises(DataError, match=r"val\.jsonl:1 \(annotation 'c2'\): 2 options, expected 3"):
        data(bert, eraser_dir=str(root))
    root = eraser(tmp_path / "d", {"train": [ann("c1", "bank", [], None), '{"annotation_id": "c2", "classif']},
                  docs)
    with pytest.raises(DataError, match=r"train\.jsonl:2: malformed JSON"):
        read_eraser(root, "train")
    root = eraser(tmp_path / "e", {"train": [ann("c1", "NEG"), ann("c2", "POS")], "val": [ann("c1", "MEH")]}, docs)
    with pytest.raises(DataError, match=r"val\.jsonl:1 \(annotation 'c1'\): label 'MEH' is not among the classes"):
        data(bert, eraser_dir=str(root))
    (tmp_path / "f").mkdir()
    with pytest.raises(DataError, match=r"train\.jsonl: no such file \(the train split is required\)"):
        data(bert, eraser_dir=str(tmp_path / "f"))


def test_eraser_absent_split_has_no_loader(tmp_path: Path, bert: Any) -> None:
    root = eraser(tmp_path, {"train": [ann("d1", "NEG"), ann("d2", "POS")]}, {"d1": "a film", "d2": "the film"})
    assert read_eraser(root, "test") is None
    dm = data(bert, eraser_dir=str(root))
    assert set(dm.datasets) == {"train"} and dm.val_dataloader() == [] and dm.test_dataloader() == []


# ----------------------------------------------------------------------------------------------- SST-style
def test_sst_reader_string_labels_query_and_defaults(tmp_path: Path, bert: Any) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"text": "a  dull\tfilm", "label": "neg", "rationale": [0, True, False]},
        {"id": "x7", "tokens": ["a", "good", "film"], "label": "pos", "query": "what is the sentiment ?"},
    ])
    rows = read_sst(str(path))
    assert rows[0] == RationaleRow(f"{path}:1", [["a", "dull", "film"]], [[0, 1, 0]], None, None, "neg", f"{path}:1")
    assert rows[1].id == "x7" and rows[1].rationale is None and rows[1].query == "what is the sentiment ?"
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "a film", "label": 1}])
    dm = data(bert, train_files=str(path), val_files=str(val))
    assert dm.label_names == ["neg", "pos"]
    b = batch_of(dm)
    assert b["labels"].tolist() == [0, 1] and b["has_rationale"].tolist() == [True, False]
    assert "token_type_ids" in b and b["token_type_ids"][1].sum() == 6  # what is the sentiment ? [SEP]
    assert batch_of(dm, "val")["labels"].tolist() == [1]  # an int label is the class index
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": "a film", "label": 2}, {"text": "a film", "label": 0},
                                              {"text": "a film", "label": 1}])
    assert data(bert, train_files=str(ints)).label_names == ["0", "1", "2"]
    assert data(bert, train_files=str(ints), labels=["a", "b", "c", "d"]).num_labels == 4


BAD_SST = [
    ({"sentence": "x", "label": 1}, "missing field 'text' or 'tokens'"),
    ({"text": "a film"}, "missing field 'label'"),
    ({"text": "   ", "label": 1}, "field 'text' is empty"),
    ({"tokens": [], "label": 1}, "field 'tokens' must be a non-empty list of words"),
    ({"tokens": ["a b"], "label": 1}, "field 'tokens'[0] = 'a b' is not a word"),
    ({"text": "a film", "label": 1, "rationale": [1]}, "field 'rationale' must be a list of 2 values (one per word), "
                                                        "got 1 values"),
    ({"text": "a film", "label": 1, "rationale": [0, 2]}, "field 'rationale'[1] = 2 (expected 0 or 1)"),
    ({"text": "a film", "label": 1, "rationale": [0, 0.5]}, "field 'rationale'[1] = 0.5 (expected 0 or 1)"),
    ({"text": "a film", "label": 1.5}, "field 'label' must be a class index (int) or a class name"),
]


@pytest.mark.parametrize(("row", "message"), BAD_SST)
def test_sst_errors_name_file_line_and_field(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "fine", "label": 0}, row])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        read_sst(str(path))


def test_sst_unknown_label_at_val(tmp_path: Path, bert: Any) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}])
    with pytest.raises(DataError, match=re.escape(f"{val}:2: label 'meh' is not among the classes ['neg', 'pos']")):
        data(bert, train_files=str(train), val_files=str(val))
    val = write_jsonl(tmp_path / "v2.jsonl", [{"text": "a", "label": 5}])
    with pytest.raises(DataError, match=re.escape(f"{val}:1: label 5 is not a class index in [0, 2)")):
        data(bert, train_files=str(train), val_files=str(val))


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of eraser_dir"):
        RationaleDataModule()
    with pytest.raises(ConfigError, match="exactly one of eraser_dir"):
        RationaleDataModule(eraser_dir="x", train_files="y")
    with pytest.raises(ConfigError, match="multiple_choice needs an ERASER folder"):
        RationaleDataModule(train_files="y", multiple_choice=True)
    with pytest.raises(ConfigError, match="truncation must be"):
        RationaleDataModule(train_files="y", truncation="cut")  # type: ignore[arg-type]


def test_collate_pads_right_and_checks_choices(bert: Any) -> None:
    enc = RationaleEncoder(bert, 32)
    rows = [RationaleRow("a", [["a", "film"]], [[0, 1]], None, None, 1, "x:1"),
            RationaleRow("b", [["the", "dull", "mess"]], None, None, None, 0, "x:2")]
    examples = [enc.encode(r, r.label, TruncationStats()) for r in rows]
    b = collate_rationale(examples, pad_id=bert.pad_token_id)
    assert b["input_ids"].tolist() == [ids_of(bert, "[CLS]", "a", "film", "[SEP]") + [0],
                                       ids_of(bert, "[CLS]", "the", "dull", "mess", "[SEP]")]
    assert b["input_ids"].dtype == b["attention_mask"].dtype == b["token_type_ids"].dtype == torch.long
    assert b["candidate_mask"].dtype == torch.bool and b["rationale"].dtype == torch.float32
    assert b["rationale"].tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert b["has_rationale"].tolist() == [True, False] and b["labels"].tolist() == [1, 0]
    mc = enc.encode(RationaleRow("c", [["a"]], None, None, ["x", "y"], 0, "x:3"), 0, TruncationStats())
    with pytest.raises(ValueError, match="different numbers of options"):
        collate_rationale([examples[0], mc], pad_id=0, multiple_choice=True)


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_label_is_determined_by_cue_words() -> None:
    cue_class = {w: c for c, cues in enumerate(synth.CUE_WORDS) for w in cues}
    all_cues = set(cue_class) | set(synth.OPTION_CUES) | set(synth.OPTION_CUES.values())
    assert not all_cues & set(synth.NEUTRAL) and len(set(synth.NEUTRAL)) == len(synth.NEUTRAL) >= 150
    for num_classes in (2, 4):
        rows = synth.make_examples(300, seed=3, num_classes=num_classes)
        assert {r["label"] for r in rows} == set(range(num_classes))
        for r in rows:
            cues = [i for i, w in enumerate(r["tokens"]) if w in cue_class]
            assert [i for i, m in enumerate(r["rationale"]) if m] == cues and 1 <= len(cues) <= 3
            assert {cue_class[r["tokens"][i]] for i in cues} == {r["label"]}
            assert 15 <= len(r["tokens"]) - len(cues) <= 30
    assert synth.make_examples(20, seed=0) == synth.make_examples(20, seed=0)
    assert synth.make_examples(20, seed=0) != synth.make_examples(20, seed=1)
    assert synth.make_examples(20, seed=0, stream="val") != synth.make_examples(20, seed=0)
    for r in synth.make_multiple_choice(50, seed=0, num_choices=4):
        cue = synth.OPTION_CUES[r["options"][r["label"]]]
        assert len(set(r["options"])) == 4 and [w for w in r["tokens"] if w in all_cues] == [cue]
        assert r["rationale"] == [int(w == cue) for w in r["tokens"]]


def test_committed_synthetic_files_match_the_generator() -> None:
    for split, n in (("train", 512), ("val", 128), ("test", 128)):
        rows = read_sst(str(SYNTHETIC / f"{split}.jsonl"))
        made = synth.make_examples(n, seed=0, stream=split)
        assert [(r.id, r.docs[0], r.label, r.rationale[0]) for r in rows] == [
            (m["id"], m["tokens"], m["label"], m["rationale"]) for m in made]


@pytest.mark.parametrize("docs", ["jsonl", "folder"])
def test_synthetic_eraser_round_trip(tmp_path: Path, docs: str) -> None:
    rows = synth.make_examples(40, seed=5)
    synth.write_sst(rows, tmp_path / "sst" / "train.jsonl")
    synth.write_eraser(rows, tmp_path / "eraser", "train", docs=docs)  # type: ignore[arg-type]
    synth.write_eraser(rows[:5], tmp_path / "eraser", "val", docs=docs)  # type: ignore[arg-type]
    back = read_eraser(tmp_path / "eraser", "train")
    sst = read_sst(str(tmp_path / "sst" / "train.jsonl"))
    names = synth.class_names(2)
    assert [(r.id, r.docs, [names.index(r.label)], r.rationale, r.query) for r in back] == [
        (s.id, s.docs, [s.label], s.rationale, synth.SENTIMENT_QUERY) for s in sst]
    assert [r.id for r in read_eraser(tmp_path / "eraser", "val")] == [r["id"] for r in rows[:5]]  # docs merged


def test_synthetic_multiple_choice_through_the_datamodule(tmp_path: Path, tiny: Any) -> None:
    rows = synth.make_multiple_choice(12, seed=0, num_choices=3)
    synth.write_eraser(rows, tmp_path, "train")
    dm = data(tiny, eraser_dir=str(tmp_path), batch_size=4)
    b = batch_of(dm)
    assert dm.num_choices == dm.num_labels == 3 and b["input_ids"].shape[:2] == (4, 3)
    assert b["labels"].tolist() == [r["label"] for r in rows[:4]] and b["has_rationale"].all()


def test_cli_writes_sst_and_eraser(tmp_path: Path) -> None:
    synth.main(["--out", str(tmp_path / "sst"), "--n-train", "6", "--n-val", "2", "--n-test", "2"])
    assert [len(read_sst(str(tmp_path / "sst" / f"{s}.jsonl"))) for s in ("train", "val", "test")] == [6, 2, 2]
    synth.main(["--out", str(tmp_path / "mc"), "--n-train", "4", "--n-val", "2", "--n-test", "2",
                "--multiple-choice", "--docs-folder"])
    assert sorted(p.name for p in (tmp_path / "mc").iterdir()) == ["docs", "test.jsonl", "train.jsonl", "val.jsonl"]
    assert all(r.options is not None for r in read_eraser(tmp_path / "mc", "val"))


# -------------------------------------------------------------------------------------------- end to end
def test_datamodule_end_to_end_on_the_synthetic_files() -> None:
    dm = RationaleDataModule(train_files=str(SYNTHETIC / "train.jsonl"), val_files=str(SYNTHETIC / "val.jsonl"),
                             test_files=str(SYNTHETIC / "test.jsonl"), tokenizer="tiny-bert", batch_size=8)
    dm.setup("fit")
    assert dm.num_labels == 2 and dm.label_names == ["0", "1"] and dm.num_choices is None
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 512, "val": 128, "test": 128}
    assert dm.truncation_stats["train"].truncated == 0
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"input_ids", "attention_mask", "candidate_mask", "rationale", "has_rationale", "labels", "ids",
                      "word_ids"}
    bsz, t = b["input_ids"].shape
    # word_ids: the document word of every candidate subword, -1 elsewhere; a word's subwords share its gold mark
    assert b["word_ids"].shape == (8, t) and torch.equal(b["word_ids"] >= 0, b["candidate_mask"])
    rows = {r["id"]: r for r in map(json.loads, (SYNTHETIC / "train.jsonl").read_text().splitlines())}
    for i, key in enumerate(b["ids"]):
        words = b["word_ids"][i][b["candidate_mask"][i]]
        assert words.unique().tolist() == list(range(len(rows[key]["text"].split())))
        gold = torch.tensor(rows[key]["rationale"], dtype=torch.float32)[words]
        assert torch.equal(gold, b["rationale"][i][b["candidate_mask"][i]])
    assert bsz == 8 and t <= 256
    for key, dtype in (("input_ids", torch.long), ("attention_mask", torch.long), ("candidate_mask", torch.bool),
                       ("rationale", torch.float32)):
        assert b[key].shape == (8, t) and b[key].dtype == dtype
    assert b["labels"].shape == b["has_rationale"].shape == (8,) and b["has_rationale"].all()
    assert len(b["ids"]) == 8 and all(isinstance(i, str) for i in b["ids"])
    assert not (b["rationale"].bool() & ~b["candidate_mask"]).any()
    assert (b["candidate_mask"] <= b["attention_mask"].bool()).all()
    assert len(dm.val_dataloader()) == 16 and len(dm.test_dataloader()) == 16
    example = dm.datasets["train"][0]
    assert pickle.loads(pickle.dumps(example)) == example  # plain lists: DataLoader workers can take it
    assert pickle.loads(pickle.dumps(dm.train_dataloader().collate_fn))([example])["ids"] == [example.id]
