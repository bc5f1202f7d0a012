"""Token ids of a text or a text pair for encoder models, and their right-padded batches.

Token ids (our choice): the tokenizer's own special tokens when it adds any (BERT: ``[CLS] a [SEP] b [SEP]``),
otherwise ``BOS a EOS [b EOS]`` with whichever of BOS / EOS exists, so that position 0 can be pooled as [CLS].
Too long inputs are cut longest-first to ``max_length`` (counted in ``TextEncoder.truncated``). The text is tokenised
as text (a ``[SEP]`` or ``</s>`` spelled in the data stays characters) and cut by characters before tokenising
(:func:`core.chat.cap_text`), so a huge text costs memory bounded by ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from core.chat import cap_text, text_ids
from core.errors import ConfigError
from core.heads import TaskType


class TextExample(NamedTuple):
    input_ids: list[int]
    label: int | float
    token_type_ids: list[int] | None = None  # only from tokenizers that make them (BERT's own pair encoding)


class TextEncoder:
    """Token ids of a text or a text pair, cut longest-first to ``max_length`` (see the module docstring)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tok, self.max_length = tokenizer, max_length
        plain = len(self._ids("a")) + len(self._ids("b"))
        self.native = len(tokenizer("a", "b")["input_ids"]) > plain  # the tokenizer adds its own special tokens
        self.head = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        self.sep = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.truncated = 0

    def _ids(self, text: str) -> list[int]:
        return text_ids(self.tok, text)

    def __call__(self, text: str, pair: str | None = None) -> tuple[list[int], list[int] | None]:
        """``(input_ids, token_type_ids or None)``."""
        text = cap_text(self.tok, text, self.max_length)  # only max_length tokens of each can be kept
        pair = cap_text(self.tok, pair, self.max_length) if pair is not None else None
        if self.native:
            enc = self.tok(text, pair, truncation=True, max_length=self.max_length, split_special_tokens=True)
            self.truncated += len(self.tok(text, pair, split_special_tokens=True)["input_ids"]) > len(enc["input_ids"])
            types = enc.get("token_type_ids")
            return list(enc["input_ids"]), (list(types) if types is not None else None)
        a, b = self._ids(text), (self._ids(pair) if pair is not None else [])
        budget = self.max_length - len(self.head) - len(self.sep) * (1 + (pair is not None))
        if budget < 2:
            raise ConfigError(f"max_length={self.max_length} leaves no room for text after the special tokens")
        if len(a) + len(b) > budget:
            self.truncated += 1
            while len(a) + len(b) > budget:
                (a if len(a) >= len(b) else b).pop()
        return self.head + a + self.sep + (b + self.sep if pair is not None else []), None


def collate_text(examples: Sequence[TextExample], pad_id: int, task_type: TaskType) -> dict[str, torch.Tensor]:
    """Right-padded ids and masks with the labels (int64 classes or float32 scores)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(examples), width, dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    dtype = torch.long if task_type == "classification" else torch.float32
    labels = torch.tensor([e.label for e in examples], dtype=dtype)  # (B,)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if examples[0].token_type_ids is not None:
        types = torch.zeros_like(ids)  # (B, T)
        for i, e in enumerate(examples):
            types[i, : len(e.input_ids)] = torch.tensor(e.token_type_ids)
        batch["token_type_ids"] = types
    return batch
