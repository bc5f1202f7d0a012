"""PreferenceDataModule: (prompt, chosen, rejected) pairs for DPO, and later for Critic-RM.

Input: JSONL / JSON / Parquet files or a Hugging Face dataset (saved folder or name) whose rows hold
``prompt``, ``chosen`` and ``rejected`` as strings or as chat messages (``[{"role", "content"}, ...]``, TRL's
conversational format); other fields are carried through in ``batch["extras"]``.

Tokenisation: with a chat template, the prompt is rendered with ``add_generation_prompt=True`` and each full
conversation is rendered once; the response is the text after the prompt, tokenised without special tokens,
so BOS appears once (from the template), EOS once (the template's end of turn), and the prompt/response
boundary is exact. Without a template: ``BOS + prompt`` then ``response + EOS``. Message text is always tokenised
as text (a prompt spelling ``<|eot|>`` cannot forge a turn; see :mod:`core.chat`), and text longer than its
token limit could keep is cut by characters first, so one huge line costs memory bounded by ``max_length``.

Checks (before any training): malformed JSON, a missing or empty field, chosen identical to rejected
(dropped, counted, warned), a prompt over ``max_prompt_length`` (truncated or dropped per
``prompt_overflow``, counted and logged), responses cut to fit ``max_length`` (counted).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from core.chat import PairTokenizer, TokenizerFromModule, messages_of, text_of
from core.errors import ConfigError, DataError
from core.packing import TokenizedPair, collate_pairs
from core.records import Record, no_usable_records, read_records, sources_text
from datamodules.loaders import resumable_train_loader

log = logging.getLogger(__name__)


class PairDataset(Dataset):
    def __init__(self, pairs: list[TokenizedPair], extras: list[dict[str, Any]]) -> None:
        self.pairs, self.extras = pairs, extras

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[TokenizedPair, dict[str, Any]]:
        return self.pairs[i], self.extras[i]


def collate(items: Sequence[tuple[TokenizedPair, dict]], pad_id: int, packed: bool, multiple: int) -> dict:
    batch = collate_pairs([p for p, _ in items], pad_id=pad_id, packed=packed, pad_to_multiple_of=multiple)
    batch["extras"] = [e for _, e in items]
    return batch


class PreferenceDataModule(TokenizerFromModule, LightningDataModule):
    """Preference pairs for DPO-style objectives.

    Args:
        train_files, val_files, test_files, predict_files: JSONL / JSON / Parquet files (a path or a list).
            With no train source at all, a synthetic dataset with a planted preference is generated
            (``datamodules/synthetic.py``): ``synthetic_size`` pairs, an eighth of that for validation.
        hf_dataset: a Hugging Face dataset (``save_to_disk`` folder or hub name) read beside the files;
            ``hf_train_split`` / ``hf_val_split`` / ``hf_test_split`` name its splits.
        tokenizer: model name whose tokenizer to use; None takes the LightningModule's.
        max_length: cap on prompt + response tokens of each sequence.
        max_prompt_length: cap on prompt tokens; ``prompt_overflow`` says what happens beyond it.
        prompt_truncation_side: keep the end (``left`` truncation, the default) or the start of long prompts.
        pack_shared_prefix: one row per pair holding the prompt (and any common response start) once.
        use_chat_template: None = use it when the tokenizer has one.
    """

    def __init__(
        self,
        train_files: list[str] | str | None = None,
        val_files: list[str] | str | None = None,
        test_files: list[str] | str | None = None,
        predict_files: list[str] | str | None = None,
        hf_dataset: str | None = None,
        hf_train_split: str = "train",
        hf_val_split: str | None = None,
        hf_test_split: str | None = None,
        tokenizer: str | None = None,
        max_length: int = 512,
        max_prompt_length: int = 256,
        prompt_overflow: Literal["truncate", "drop", "error"] = "truncate",
        prompt_truncation_side: Literal["left", "right"] = "left",
        pack_shared_prefix: bool = True,
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        synthetic_size: int = 512,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if max_prompt_length >= max_length:
            raise ConfigError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
        if max_prompt_length < 2:
            raise ConfigError(f"max_prompt_length must be at least 2, got {max_prompt_length}")
        self.datasets: dict[str, PairDataset] = {}
        self.stats: dict[str, Counter] = {}
        self._fingerprints: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------- sources
    def _sources(self) -> dict[str, list[Record]]:
        h = self.hparams
        sources: dict[str, list[Record]] = {}
        if h.train_files is None and h.hf_dataset is None:
            from datamodules.synthetic import make_pairs

            sources["train"] = [(r, f"synthetic:{i}") for i, r in enumerate(make_pairs(h.synthetic_size, h.seed))]
            n_val = max(8, h.synthetic_size // 8)
            sources["val"] = [(r, f"synthetic-val:{i}") for i, r in enumerate(make_pairs(n_val, h.seed + 1))]
        else:
            sources["train"] = read_records(h.train_files, h.hf_dataset, h.hf_train_split)
        for split, files, hf_split in (
            ("val", h.val_files, h.hf_val_split), ("test", h.test_files, h.hf_test_split),
            ("predict", h.predict_files, None),
        ):
            if files is not None or (hf_split is not None and h.hf_dataset is not None):
                sources[split] = read_records(files, h.hf_dataset if hf_split else None, hf_split or "train")
        return sources

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pt = PairTokenizer(self.tokenizer, self.hparams.use_chat_template, self.hparams.system_prompt)
        sources = self._sources()
        for split, records in sources.items():
            self.datasets[split], self.stats[split] = self._build(records, pt, split)
        if len(self.datasets["train"]) == 0:
            h = self.hparams
            source = sources_text(h.train_files, h.hf_dataset, h.hf_train_split)
            raise no_usable_records("training pairs", source, len(sources["train"]), self.stats["train"])

    def _build(self, records: list[Record], pt: PairTokenizer, split: str) -> tuple[PairDataset, Counter]:
        h = self.hparams
        stats: Counter = Counter()
        pairs: list[TokenizedPair] = []
        extras: list[dict[str, Any]] = []
        for row, where in records:
            for field in ("prompt", "chosen", "rejected"):
                if row.get(field) is None:
                    raise DataError(f"{where}: missing field {field!r} (expected prompt, chosen and rejected)")
            prompt = messages_of(row["prompt"], "user", "prompt", where)
            chosen = messages_of(row["chosen"], "assistant", "chosen", where)
            rejected = messages_of(row["rejected"], "assistant", "rejected", where)
            for field, msgs in (("chosen", chosen), ("rejected", rejected)):
                if not text_of(msgs).strip():
                    raise DataError(f"{where}: field {field!r} is an empty response")
            if not text_of(prompt).strip():
                raise DataError(f"{where}: field 'prompt' is empty")
            if chosen == rejected:
                stats["identical"] += 1
                continue
            # Text is cut by characters before tokenising when only max_prompt_length tokens can be kept (not for
            # "error", whose message gives the exact count; the record readers' line limit bounds that text).
            cap = None if h.prompt_overflow == "error" else h.max_prompt_length
            p_ids = pt.prompt_ids(prompt, max_tokens=cap, side=h.prompt_truncation_side)
            if len(p_ids) > h.max_prompt_length:
                if h.prompt_overflow == "error":
                    raise DataError(
                        f"{where}: prompt has {len(p_ids)} tokens, over max_prompt_length={h.max_prompt_length}"
                    )
                if h.prompt_overflow == "drop":
                    stats["prompt_too_long_dropped"] += 1
                    continue
                stats["prompt_truncated"] += 1
                k = h.max_prompt_length
                if h.prompt_truncation_side == "right":
                    p_ids = p_ids[:k]
                elif p_ids[0] == self.tokenizer.bos_token_id:
                    p_ids = p_ids[:1] + p_ids[len(p_ids) - (k - 1):]  # keep BOS, then the end of the prompt
                else:
                    p_ids = p_ids[-k:]
            budget = h.max_length - len(p_ids)
            c_ids = pt.response_ids(prompt, chosen, where, max_tokens=budget)
            r_ids = pt.response_ids(prompt, rejected, where, max_tokens=budget)
            if len(c_ids) > budget or len(r_ids) > budget:
                stats["response_truncated"] += 1
                c_ids, r_ids = c_ids[:budget], r_ids[:budget]
                if c_ids == r_ids:
                    stats["identical_after_truncation"] += 1
                    continue
            pairs.append(TokenizedPair(p_ids, c_ids, r_ids, index=len(pairs)))
            extras.append({k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")})
        stats["kept"] = len(pairs)
        self._report(split, stats)
        return PairDataset(pairs, extras), stats

    @staticmethod
    def _report(split: str, stats: Counter) -> None:
        notes = {
            "identical": "pairs with chosen identical to rejected were dropped",
            "prompt_too_long_dropped": "pairs with a prompt over max_prompt_length were dropped",
            "prompt_truncated": "prompts over max_prompt_length were truncated",
            "response_truncated": "pairs had responses cut to fit max_length",
            "identical_after_truncation": "pairs became identical after truncation and were dropped",
        }
        for key, text in notes.items():
            if stats[key]:
                rank_zero_warn(f"{split}: {stats[key]} {text}")
        log.info("%s: %d pairs kept", split, stats["kept"])

    # --------------------------------------------------------------------------------------- dataloaders
    def _collate(self) -> partial:
        return partial(collate, pad_id=self.tokenizer.pad_token_id, packed=self.hparams.pack_shared_prefix,
                       multiple=self.hparams.pad_to_multiple_of)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return resumable_train_loader(self, self.datasets["train"], shuffle=h.shuffle, seed=h.seed,
                                      batch_size=h.batch_size, collate_fn=self._collate(), num_workers=h.num_workers,
                                      persistent_workers=h.num_workers > 0)

    def _eval_loader(self, split: str) -> DataLoader:
        h = self.hparams
        return DataLoader(self.datasets[split], batch_size=h.eval_batch_size or h.batch_size,
                          collate_fn=self._collate(), num_workers=h.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require("test"))

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require("predict"))

    def _require(self, split: str) -> str:
        if split == "predict" and split not in self.datasets and "val" in self.datasets:
            return "val"
        if split not in self.datasets:
            raise DataError(f"no {split} data: set {split}_files")
        return split

    # ------------------------------------------------------------------------------ for reference caching
    def has_split(self, split: str) -> bool:
        return split in self.datasets or (split == "predict" and "val" in self.datasets)

    def split_size(self, split: str) -> int:
        return len(self.datasets[self._require(split)])

    def reference_dataloader(self, split: str, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Unshuffled batches of this rank's share of ``split`` (rows rank, rank + world, ...)."""
        ds = self.datasets[self._require(split)]
        sub = torch.utils.data.Subset(ds, list(range(rank, len(ds), world_size)))
        return DataLoader(sub, batch_size=self.hparams.eval_batch_size or self.hparams.batch_size,
                          collate_fn=self._collate())

    def fingerprint(self, split: str) -> str:
        """sha256 of the split's token ids: the data half of the reference-cache key."""
        split = self._require(split)
        if split not in self._fingerprints:
            h = hashlib.sha256()
            for p in self.datasets[split].pairs:
                h.update(repr((p.prompt, p.chosen, p.rejected)).encode())
            self._fingerprints[split] = h.hexdigest()[:16]
        return self._fingerprints[split]
