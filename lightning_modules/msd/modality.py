"""Modality removal on multimodal batches: MSD's modality-specific inputs.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021, add
one KD term per modality in which *teacher and student both see only that modality*; :func:`only` makes that
input, and the same inputs give the teacher's saliency (how much its prediction moves when a modality is gone).
How a modality is removed is one of the open choices:

- image (:func:`remove_image`): ``zero`` sets ``pixel_values`` to 0, the normalisation's mean colour;
  ``blank`` puts a constant white image through the normalisation (``(1 - mean) / std`` per channel).
- text (:func:`remove_text`): ``empty`` turns each row into the encoding of an empty text (its leading and
  trailing special tokens, e.g. ``[CLS] [SEP]`` or ``BOS EOS``, right-padded), so nothing of the text, not even
  its length, reaches the model; ``mask`` replaces every real non-special token by the mask token
  (the unk token when there is none) and keeps the attention mask, so the length stays visible.

Unknown and mask tokens stand for text, so they count as text here. The functions are pure: they return a new
batch dict (labels, ids and any other keys shared with the input) and never modify the input's tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from core.backbones import IMAGENET_MEAN, IMAGENET_STD  # the datamodule's defaults
from core.errors import ConfigError

ImageMode = Literal["zero", "blank"]
TextMode = Literal["empty", "mask"]


def remove_image(
    batch: dict[str, Any], mode: ImageMode = "zero", mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """The batch with every image replaced: all zeros (``zero``) or a white image normalised by mean/std (``blank``)."""
    pixels: Tensor = batch["pixel_values"]  # (B, C, H, W)
    if mode == "zero":
        blank = torch.zeros_like(pixels)
    elif mode == "blank":
        if len(mean) != pixels.shape[1] or len(std) != pixels.shape[1]:
            raise ConfigError(f"mean/std have {len(mean)}/{len(std)} channels, the images {pixels.shape[1]}")
        white = (1.0 - torch.tensor(mean)) / torch.tensor(std)  # (C,): 1.0 in [0, 1] pixel space, normalised
        blank = white.to(pixels).view(1, -1, 1, 1).expand_as(pixels).clone()  # (B, C, H, W)
    else:
        raise ConfigError(f"image removal mode must be 'zero' or 'blank', got {mode!r}")
    return {**batch, "pixel_values": blank}


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids that frame a text rather than carry it: the tokenizer's special tokens less unk and mask (unless they
    also serve as CLS/SEP/BOS/EOS, as in GPT-2)."""
    framing = {getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "bos", "eos")} - {None}
    content = {tokenizer.unk_token_id, getattr(tokenizer, "mask_token_id", None)} - {None} - framing
    return sorted(set(tokenizer.all_special_ids) - content)


def _is_special(input_ids: Tensor, tokenizer: Any) -> Tensor:
    return torch.isin(input_ids, torch.tensor(special_token_ids(tokenizer), device=input_ids.device))  # (B, T)


def remove_text(batch: dict[str, Any], mode: TextMode = "empty", tokenizer: Any = None) -> dict[str, Any]:
    """The batch with every text removed: the encoding of an empty text (``empty``) or every text token masked
    (``mask``, same length).

    ``empty`` keeps each row's leading and trailing special tokens only ([CLS] [SEP], or BOS EOS: what the tokenizer
    makes of an empty text; special tokens typed inside a text are text, and go), with their ``token_type_ids``,
    right-padded whatever the input's padding side; a row without any keeps one attended CLS / BOS token (an
    all-masked row is undefined for some attention kernels).
    """
    if tokenizer is None:
        raise ConfigError("remove_text needs the tokenizer that made the batch")
    ids: Tensor = batch["input_ids"]  # (B, T)
    attention: Tensor = batch["attention_mask"]  # (B, T)
    real = attention.bool()
    special = _is_special(ids, tokenizer) & real  # (B, T)
    if mode == "mask":
        replacement = getattr(tokenizer, "mask_token_id", None)
        replacement = tokenizer.unk_token_id if replacement is None else replacement
        if replacement is None:
            raise ConfigError("text mode 'mask' needs a tokenizer with a mask or unk token; use 'empty'")
        return {**batch, "input_ids": ids.masked_fill(real & ~special, replacement)}
    if mode != "empty":
        raise ConfigError(f"text removal mode must be 'empty' or 'mask', got {mode!r}")

    b, t = ids.shape
    pos = torch.arange(t, device=ids.device).expand(b, t)  # (B, T)
    first = torch.where(real, pos, t).min(-1, keepdim=True).values  # (B, 1) the first real position
    last = torch.where(real, pos, -1).max(-1, keepdim=True).values  # (B, 1) the last real position
    keep = special & ((pos == first) | (pos == last))  # (B, T)
    none = ~keep.any(-1)  # (B,)
    if bool(none.any()):  # rows with no special token: one stand-in token, attended
        stand_in = next((i for i in (tokenizer.cls_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id) if i is not None), 0)
        ids = ids.clone()
        ids[none, 0] = stand_in
        keep[none, 0] = True
    # A stable sort moves the kept tokens to the front, in their order.
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices  # (B, T)
    new_mask = pos < keep.sum(-1, keepdim=True)  # (B, T)
    out = {**batch, "attention_mask": new_mask.to(attention.dtype),
           "input_ids": ids.gather(1, order).masked_fill(~new_mask, tokenizer.pad_token_id)}
    if batch.get("token_type_ids") is not None:
        out["token_type_ids"] = batch["token_type_ids"].gather(1, order).masked_fill(~new_mask, 0)
    return out


def only(
    batch: dict[str, Any], modality: Literal["image", "text"], image_mode: ImageMode = "zero",
    text_mode: TextMode = "empty", tokenizer: Any = None, mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """The batch with just ``modality`` left: MSD's input in which teacher and student both see only that modality."""
    if modality == "image":
        return remove_text(batch, text_mode, tokenizer)
    if modality == "text":
        return remove_image(batch, image_mode, mean, std)
    raise ConfigError(f"modality must be 'image' or 'text', got {modality!r}")


VIEWS = ("full", "image", "text")  # the three inputs MSD feeds both models: full, image only, text only
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def views(
    batch: dict[str, Any], image_mode: ImageMode = "zero", text_mode: TextMode = "empty", tokenizer: Any = None,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """The model inputs of :data:`VIEWS` stacked along the batch: (3B, ...) tensors, rows [full; image only; text
    only], so one forward gives all three and ``logits.view(3, B, L)`` splits them. Labels and ids are not repeated."""
    parts = [batch, only(batch, "image", image_mode, text_mode, tokenizer, mean, std),
             only(batch, "text", image_mode, text_mode, tokenizer, mean, std)]
    out = {"pixel_values": torch.cat([p["pixel_values"] for p in parts])}  # (3B, C, H, W)
    for key in TEXT_KEYS:
        if batch.get(key) is not None:
            out[key] = torch.cat([p[key] for p in parts])  # (3B, T)
    return out
