"""RewardDataModule: preference pairs, with or without critiques, for reward models (Critic-RM and its baseline).

Yu et al. 2025 (NAACL), "Self-Generated Critiques Boost Reward Modeling for Language Models": the reward model
reads (prompt, response, critique) and scores it. Each response of a pair becomes one conversation::

    [user: prompt] [assistant: response] [user: critique instruction] [assistant: critique]
     \\____ P ____/ \\______ R ________/ \\______________ A ___________/ \\____ C ______/

rendered with the tokenizer's chat template (one BOS; exact boundaries, as for DPO pairs). The LM head learns C
(the loss sees only the positions that predict critique tokens) and the reward head reads the last non-pad token.
Without critiques (the plain reward model, ``with_critiques=False``) a sequence is P + R.

Input rows: ``prompt``, ``chosen``, ``rejected`` (strings or chat messages) and, with critiques, ``chosen_critique``
and ``rejected_critique``: a string, or a list of strings (one training example per critique, the shorter list
cycled), as written by ``lm-suite critiques generate``. Evaluation files (RewardBench format) need no
critiques: at evaluation the model writes its own; their ``subset`` field groups the accuracy.

Checks, before training: a missing or empty field names the file and line (a critique field is required in the
training split while critiques are on, and in the validation split if any of its rows has one); prompts over
``max_prompt_length`` are dropped; critiques over ``max_critique_length`` are cut, dropped or refused
(``critique_overflow``); responses are cut so that everything fits ``max_length``. Every cut or drop is counted
and logged.

Training / validation batches (right padding by default; rows = the B chosen sequences, then the B rejected)::

    input_ids, attention_mask, position_ids  (2B, T)
    targets        (2B, T)  the token each position predicts (input_ids shifted left)
    critique_mask  (2B, T)  True where the predicted token is a critique token
    requests       the (P + R + A) rows, left-padded, for generating critiques (input_ids, attention_mask (2B, T'))
    subset         (B,)     index into ``subsets[split]`` (-1 when the row has none)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from core.chat import Messages, PairTokenizer, TokenizerFromModule, messages_of, text_of
from core.errors import ConfigError, DataError
from core.records import Record, no_usable_records, read_records, sources_text
from datamodules.loaders import resumable_train_loader

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")


@dataclass
class Side:
    """One response of a pair: its ids, the critique-request turn after it, and the critique (None: no critique)."""

    response: list[int]
    ask: list[int]
    critique: list[int] | None


@dataclass
class RewardExample:
    prompt: list[int]
    chosen: Side
    rejected: Side
    subset: int = -1
    index: int = 0


def turn_ids(
    pt: PairTokenizer, prompt: Messages, response: Messages, instruction: Messages | None, where: str,
    max_tokens: int | None = None,
) -> tuple[list[int], list[int]]:
    """(R, A): the response's ids after the prompt, and the critique-request turn after it (empty without one).

    ``max_tokens``: only that many response ids can be kept, so its text is cut before tokenising.
    """
    r_ids = pt.response_ids(prompt, response, where, max_tokens)
    ask = pt.continuation_ids(prompt + response, instruction, where) if instruction is not None else []
    return r_ids, ask


def critique_ids(
    pt: PairTokenizer, history: Messages, critique: str, where: str, max_tokens: int | None = None
) -> list[int]:
    """C: a critique turn after P + R + A, ending at the turn's closing token (where generation stops)."""
    ids = pt.continuation_ids(history, [{"role": "assistant", "content": critique}], where, max_tokens)
    return pt.strip_turn_tail(ids)


def pad_rows(rows: Sequence[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, attention mask and position ids (2D each) of ``rows`` padded on ``side``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, T): 0, 1, ... from the first real token
    return ids, mask, positions


def collate_reward(
    examples: Sequence[RewardExample], pad_id: int, with_critiques: bool, padding_side: str = "right"
) -> dict[str, Any]:
    """Teacher-forced rows (critique included) and generation requests (without it); see the module docstring."""
    full: list[list[int]] = []
    starts: list[int] = []  # where each row's critique starts (= its length without critique)
    requests: list[list[int]] = []
    for side in SIDES:
        for ex in examples:
            s: Side = getattr(ex, side)
            head = ex.prompt + s.response + (s.ask if with_critiques else [])
            requests.append(head)
            critique = s.critique if with_critiques and s.critique is not None else []
            starts.append(len(head))
            full.append(head + critique)
    ids, mask, positions = pad_rows(full, pad_id, padding_side)
    critique_mask = torch.zeros_like(mask, dtype=torch.bool)  # (2B, T)
    offset = mask.shape[1] - mask.sum(-1) if padding_side == "left" else torch.zeros(len(full), dtype=torch.long)
    for i, (row, start) in enumerate(zip(full, starts, strict=True)):
        o = int(offset[i])
        critique_mask[i, o + start - 1 : o + len(row) - 1] = True  # positions predicting critique tokens
    req_ids, req_mask, _ = pad_rows(requests, pad_id, "left")
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "targets": torch.roll(ids, -1, dims=1),  # (2B, T); the wrapped column is never in critique_mask
        "critique_mask": critique_mask,
        "requests": {"input_ids": req_ids, "attention_mask": req_mask},  # (2B, T')
        "subset": torch.tensor([ex.subset for ex in examples], dtype=torch.long),  # (B,)
        "index": torch.tensor([ex.index for ex in examples], dtype=torch.long),  # (B,)
        "has_critiques": with_critiques and all(
            getattr(ex, s).critique is not None for ex in examples for s in SIDES
        ),
    }


class RewardDataModule(TokenizerFromModule, LightningDataModule):
    """Preference pairs for :class:`~lightning_modules.critic_rm.module.CriticRM` (with critiques, or the plain RM).

    Args:
        train_files, val_files, test_files, predict_files: JSONL / JSON / Parquet files (a path or a list); test
            and predict files may be RewardBench files (``subset`` field, no critiques).
        hf_dataset, hf_train_split, hf_val_split: a Hugging Face dataset (``save_to_disk`` folder or hub name).
        with_critiques: None = follow the LightningModule's ``use_critiques``.
        tokenizer: model name whose tokenizer to use; None takes the LightningModule's.
        max_length: cap on the tokens of one sequence (P + R + A + C).
        max_prompt_length: prompts over it are dropped (counted).
        max_critique_length: cap on critique tokens; beyond it ``critique_overflow`` decides: ``truncate`` (cut,
            counted), ``drop`` the example (counted) or ``error``.
        padding_side: padding of the teacher-forced rows (the reward head reads the last real token either way).
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
        with_critiques: bool | None = None,
        tokenizer: str | None = None,
        max_length: int = 512,
        max_prompt_length: int = 256,
        max_critique_length: int = 128,
        critique_overflow: Literal["truncate", "drop", "error"] = "truncate",
        padding_side: Literal["right", "left"] = "right",
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
        if train_files is None and hf_dataset is None and test_files is None and predict_files is None:
            raise ConfigError("RewardDataModule needs train_files, hf_dataset, test_files or predict_files")
        if not 2 <= max_prompt_length < max_length:
            raise ConfigError(f"need 2 <= max_prompt_length < max_length, got {max_prompt_length}, {max_length}")
        if critique_overflow not in ("truncate", "drop", "error") or padding_side not in ("right", "left"):
            raise ConfigError(f"critique_overflow must be truncate, drop or error and padding_side right or left, got "
                              f"{critique_overflow!r}, {padding_side!r}")
        if max_critique_length < 1:
            raise ConfigError(f"max_critique_length must be >= 1, got {max_critique_length}")
        self.datasets: dict[str, list[RewardExample]] = {}
        self.subsets: dict[str, list[str]] = {}
        self.stats: dict[str, Counter] = {}

    # -------------------------------------------------------------------------------------- module settings
    def _module_hparam(self, name: str, default: Any) -> Any:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(getattr(module, "hparams", None), name, default)

    @property
    def with_critiques(self) -> bool:
        """``with_critiques`` if set, else the LightningModule's ``use_critiques``."""
        own = self.hparams.with_critiques
        return bool(self._module_hparam("use_critiques", True) if own is None else own)

    @property
    def critique_instruction(self) -> str:
        """The LightningModule's ``critique_instruction`` (the default one when there is no module)."""
        from core.chat import DEFAULT_CRITIQUE_INSTRUCTION

        return self._module_hparam("critique_instruction", DEFAULT_CRITIQUE_INSTRUCTION)

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        pt = PairTokenizer(self.tokenizer, h.use_chat_template, h.system_prompt)
        sources: dict[str, list[Record]] = {}
        if h.train_files is not None or h.hf_dataset is not None:
            sources["train"] = read_records(h.train_files, h.hf_dataset, h.hf_train_split)
        if h.val_files is not None or (h.hf_val_split is not None and h.hf_dataset is not None):
            hf = h.hf_dataset if h.hf_val_split else None
            sources["val"] = read_records(h.val_files, hf, h.hf_val_split or "train")
        for split, files in (("test", h.test_files), ("predict", h.predict_files)):
            if files is not None:
                sources[split] = read_records(files)
        for split, records in sources.items():
            self.datasets[split], self.subsets[split], self.stats[split] = self._build(records, pt, split)
        if "train" in self.datasets and not self.datasets["train"]:
            source = sources_text(h.train_files, h.hf_dataset, h.hf_train_split)
            raise no_usable_records("training pairs", source, len(sources["train"]), self.stats["train"])

    def _critiques(self, row: dict[str, Any], side: str, where: str) -> list[str]:
        value = row.get(f"{side}_critique")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise DataError(
                f"{where}: field '{side}_critique' must be a non-empty string or list of non-empty strings "
                "(critiques are on: write them with `lm-suite critiques generate`, or train the plain "
                "reward model with --model.use_critiques false)"
            )
        return values

    def _build(self, records: list[Record], pt: PairTokenizer, split: str) -> tuple[list[RewardExample], list, Counter]:
        h = self.hparams
        critiques_on = self.with_critiques
        need = critiques_on and (
            split == "train" or (split == "val" and any("chosen_critique" in r or "rejected_critique" in r
                                                         for r, _ in records))
        )
        instruction: Messages = [{"role": "user", "content": self.critique_instruction}]
        stats: Counter = Counter()
        subsets: list[str] = []
        out: list[RewardExample] = []
        for row, where in records:
            for field in ("prompt", *SIDES):
                if row.get(field) is None:
                    raise DataError(f"{where}: missing field {field!r} (expected prompt, chosen and rejected)")
            prompt = messages_of(row["prompt"], "user", "prompt", where)
            responses = {s: messages_of(row[s], "assistant", s, where) for s in SIDES}
            for field, msgs in (("prompt", prompt), *responses.items()):
                if not text_of(msgs).strip():
                    raise DataError(f"{where}: field {field!r} is empty")
            texts = {s: self._critiques(row, s, where) for s in SIDES} if need else None
            p_ids = pt.prompt_ids(prompt, max_tokens=h.max_prompt_length)  # text cut before tokenising
            if len(p_ids) > h.max_prompt_length:
                stats["prompt_too_long_dropped"] += 1
                continue
            subset = -1
            if row.get("subset") is not None:
                if not isinstance(row["subset"], str) or not row["subset"].strip():
                    raise DataError(f"{where}: field 'subset' must be a non-empty string (a RewardBench subset name)")
                if row["subset"] not in subsets:
                    subsets.append(row["subset"])
                subset = subsets.index(row["subset"])
            turns = {s: turn_ids(pt, prompt, responses[s], instruction if critiques_on else None, where,
                                 max_tokens=h.max_length)
                     for s in SIDES}
            base = {s: turns[s][0] for s in SIDES}
            ask = {s: turns[s][1] for s in SIDES}
            n = max(len(texts["chosen"]), len(texts["rejected"])) if texts else 1
            for k in range(n):
                sides: dict[str, Side] = {}
                for s in SIDES:
                    critique = None
                    if texts is not None:
                        critique = critique_ids(pt, prompt + responses[s] + instruction, texts[s][k % len(texts[s])],
                                                where, max_tokens=None if h.critique_overflow == "error"
                                                else h.max_critique_length)  # error: the exact count
                        if len(critique) > h.max_critique_length:
                            if h.critique_overflow == "error":
                                raise DataError(f"{where}: {s}_critique has {len(critique)} tokens, over "
                                                f"max_critique_length={h.max_critique_length}")
                            stats[f"critique_{'truncated' if h.critique_overflow == 'truncate' else 'dropped'}"] += 1
                            if h.critique_overflow == "drop":
                                break
                            critique = critique[: h.max_critique_length]
                    budget = h.max_length - len(p_ids) - len(ask[s]) - len(critique or [])
                    if budget < 1:
                        stats["no_room_dropped"] += 1
                        break
                    response = base[s]
                    if len(response) > budget:
                        stats["response_truncated"] += 1
                        response = response[:budget]
                    sides[s] = Side(response, ask[s], critique)
                if len(sides) == 2:
                    out.append(RewardExample(p_ids, sides["chosen"], sides["rejected"], subset, index=len(out)))
        stats["kept"] = len(out)
        notes = {
            "prompt_too_long_dropped": "pairs with a prompt over max_prompt_length were dropped",
            "critique_truncated": "critiques were cut to max_critique_length",
            "critique_dropped": "examples with a critique over max_critique_length were dropped",
            "no_room_dropped": "examples left no room for the response within max_length and were dropped",
            "response_truncated": "responses were cut to fit max_length",
        }
        for key, text in notes.items():
            if stats[key]:
                rank_zero_warn(f"{split}: {stats[key]} {text}")
        log.info("%s: %d examples kept", split, stats["kept"])
        return out, subsets, stats

    # ------------------------------------------------------------------------------------------ dataloaders
    def _collate(self) -> partial:
        return partial(collate_reward, pad_id=self.tokenizer.pad_token_id, with_critiques=self.with_critiques,
                       padding_side=self.hparams.padding_side)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if "train" not in self.datasets:
            raise DataError("no training data: set train_files or hf_dataset")
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
        if "test" not in self.datasets:
            raise DataError("no test data: set test_files (for example a RewardBench file)")
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        if "predict" not in self.datasets:
            raise DataError("no predict data: set predict_files")
        return self._eval_loader("predict")
