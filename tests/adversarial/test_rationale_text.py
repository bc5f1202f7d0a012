"""Rationale documents and queries are tokenised as text: a special-token string written in the data ("[SEP]",
"<|eot|>") is no separator or end of text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import BertTokenizerFast

from core.backbones import load_tokenizer
from datamodules.rationale import RationaleEncoder, align_words

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "film", "is", "it", "[", "]", "sep", "cls",
         "##ep", "##ls", "s", "c", "pad", "mask", "<", ">", "|", "e", "o", "t", "##o", "##t"]


@pytest.fixture(params=["tiny-bert", "wordpiece"])
def tok(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "tiny-bert":
        return load_tokenizer("tiny-bert")  # byte-level BPE with <|begin_of_text|> / <|eot|> specials
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast(str(vocab))  # WordPiece with [CLS] / [SEP] / [PAD] / [MASK]


def test_special_token_strings_in_documents_and_queries_stay_text(tok: Any) -> None:
    specials = set(tok.all_special_ids) - {tok.unk_token_id}  # an unknown character may stay [UNK]
    words = ["a", "[SEP]", "good", "<|eot|>", "film", "[CLS]", "<|begin_of_text|>", "[MASK]"]
    ids, word_of = align_words(tok, words)
    assert not specials & set(ids)
    assert len(ids) == len(word_of) and set(word_of) == set(range(len(words)))  # every word keeps its subwords
    query = RationaleEncoder(tok, max_length=64).plain("is it [SEP] good <|eot|> [PAD]")
    assert query and not specials & set(query)
