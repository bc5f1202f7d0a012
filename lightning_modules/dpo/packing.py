"""Attention masks of packed preference rows, derived from their segment ids (layout: :mod:`core.packing`)."""

from __future__ import annotations

import torch
from torch import Tensor

from core.packing import CHOSEN, PAD, REJECTED


def packed_attention_mask(segment_ids: Tensor) -> Tensor:
    """Boolean mask (R, 1, T, T), True where query i may attend key j.

    Causal in row order, blind to padding, and rejected-branch queries blind to chosen-branch keys.
    The diagonal is always open so padding rows never produce an all-masked softmax (NaN).
    """
    r, t = segment_ids.shape
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    key_ok = (segment_ids != PAD)[:, None, :]  # (R, 1, T)
    cross = (segment_ids == REJECTED)[:, :, None] & (segment_ids == CHOSEN)[:, None, :]  # (R, T, T)
    mask = causal[None] & key_ok & ~cross
    mask |= torch.eye(t, dtype=torch.bool, device=segment_ids.device)[None]
    return mask[:, None]  # (R, 1, T, T)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as the additive form eager attention expects: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def flex_block_mask(segment_ids: Tensor):  # pragma: no cover - exercised on GPU
    """The same mask as :func:`packed_attention_mask`, as a FlexAttention BlockMask (sparse, no (T, T) tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        allowed = (kv <= q) & (seg[b, kv] != PAD) & ~((seg[b, q] == REJECTED) & (seg[b, kv] == CHOSEN))
        return allowed | (q == kv)

    r, t = seg.shape
    return create_block_mask(mask_mod, B=r, H=None, Q_LEN=t, KV_LEN=t, device=seg.device)
