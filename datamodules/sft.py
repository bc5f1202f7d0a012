"""SFTDataModule: (prompt, response) examples for supervised fine-tuning, loss on the response only.

Input: the same files and Hugging Face datasets as :class:`~datamodules.preference.PreferenceDataModule`, with a
``prompt`` and a response field (``response_field``, default ``response``; ``chosen`` trains on the chosen side of
preference pairs, the SFT warm-up on chosen responses of Kim et al. 2025), strings or chat messages. The chat
template is applied as for preference pairs (:class:`~datamodules.preference.PairTokenizer`): one BOS, one end of
turn, an exact prompt/response boundary.

Batches (right padding)::

    input_ids  (B, T)   prompt + response tokens
    attention_mask (B, T)
    targets    (B, T)   input_ids shifted left by one (the token each position predicts)
    loss_mask  (B, T)   True where the predicted token is a response token
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from core.chat import PairTokenizer, TokenizerFromModule, messages_of, text_of
from core.errors import ConfigError, DataError
from core.records import Record, no_usable_records, read_records, sources_text
from datamodules.loaders import resumable_train_loader

Example = tuple[list[int], list[int]]  # (prompt ids, response ids)


def collate_sft(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of (prompt, response) ids with next-token targets and the response loss mask."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros(len(examples), width, dtype=torch.bool)  # (B, T)
    attention = torch.zeros(len(examples), width, dtype=torch.long)  # (B, T)
    for i, (p, r) in enumerate(examples):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        loss_mask[i, len(p) - 1 : len(seq) - 1] = True  # positions predicting response tokens
    targets = torch.roll(ids, -1, dims=1)  # (B, T); the wrapped last column is never in loss_mask
    return {"input_ids": ids, "attention_mask": attention, "targets": targets, "loss_mask": loss_mask}


class SFTDataModule(TokenizerFromModule, LightningDataModule):
    """Prompt/response examples for :class:`~lightning_modules.dpo.sft.SFT`.

    Args:
        train_files, val_files: JSONL / JSON / Parquet files (a path or a list).
        hf_dataset, hf_train_split, hf_val_split: a Hugging Face dataset (``save_to_disk`` folder or hub name).
        response_field: the field holding the target response (``response``, or ``chosen`` for pair files).
        tokenizer: model name whose tokenizer to use; None takes the LightningModule's.
        max_length: cap on prompt + response tokens; longer examples keep the prompt and cut the response.
        max_prompt_length: prompts over it are dropped (counted and warned about).
    """

    def __init__(
        self,
        train_files: list[str] | str | None = None,
        val_files: list[str] | str | None = None,
        hf_dataset: str | None = None,
        hf_train_split: str = "train",
        hf_val_split: str | None = None,
        response_field: str = "response",
        tokenizer: str | None = None,
        max_length: int = 512,
        max_prompt_length: int = 256,
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if train_files is None and hf_dataset is None:
            raise ConfigError("SFTDataModule needs train_files or hf_dataset")
        if not 2 <= max_prompt_length < max_length:
            raise ConfigError(f"need 2 <= max_prompt_length < max_length, got {max_prompt_length}, {max_length}")
        self.datasets: dict[str, list[Example]] = {}
        self.stats: dict[str, Counter] = {}  # per split: what validation dropped or cut

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        pt = PairTokenizer(self.tokenizer, h.use_chat_template, h.system_prompt)
        train = read_records(h.train_files, h.hf_dataset, h.hf_train_split)
        self.datasets["train"] = self._build(train, pt, "train")
        if h.val_files is not None or (h.hf_val_split is not None and h.hf_dataset is not None):
            hf = h.hf_dataset if h.hf_val_split else None
            self.datasets["val"] = self._build(read_records(h.val_files, hf, h.hf_val_split or "train"), pt, "val")
        if not self.datasets["train"]:
            source = sources_text(h.train_files, h.hf_dataset, h.hf_train_split)
            raise no_usable_records("training examples", source, len(train), self.stats["train"])

    def _build(self, records: list[Record], pt: PairTokenizer, split: str) -> list[Example]:
        h = self.hparams
        stats: Counter = Counter()
        out: list[Example] = []
        for row, where in records:
            for field in ("prompt", h.response_field):
                if row.get(field) is None:
                    raise DataError(f"{where}: missing field {field!r} (expected prompt and {h.response_field})")
            prompt = messages_of(row["prompt"], "user", "prompt", where)
            response = messages_of(row[h.response_field], "assistant", h.response_field, where)
            for field, msgs in (("prompt", prompt), (h.response_field, response)):
                if not text_of(msgs).strip():
                    raise DataError(f"{where}: field {field!r} is empty")
            p_ids = pt.prompt_ids(prompt, max_tokens=h.max_prompt_length)  # text cut before tokenising
            if len(p_ids) > h.max_prompt_length:
                stats["prompt_too_long_dropped"] += 1
                continue
            r_ids = pt.response_ids(prompt, response, where, max_tokens=h.max_length - len(p_ids))
            if len(p_ids) + len(r_ids) > h.max_length:
                stats["response_truncated"] += 1
                r_ids = r_ids[: h.max_length - len(p_ids)]
            out.append((p_ids, r_ids))
        for key, text in (
            ("prompt_too_long_dropped", "examples with a prompt over max_prompt_length were dropped"),
            ("response_truncated", "responses were cut to fit max_length"),
        ):
            if stats[key]:
                rank_zero_warn(f"{split}: {stats[key]} {text}")
        self.stats[split] = stats
        return out

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return resumable_train_loader(
            self, self.datasets["train"], shuffle=h.shuffle, seed=h.seed, batch_size=h.batch_size,
            collate_fn=partial(collate_sft, pad_id=self.tokenizer.pad_token_id), num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        h = self.hparams
        return DataLoader(
            self.datasets["val"], batch_size=h.eval_batch_size or h.batch_size,
            collate_fn=partial(collate_sft, pad_id=self.tokenizer.pad_token_id), num_workers=h.num_workers,
        )
