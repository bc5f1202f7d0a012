"""Log-probabilities of target tokens from logits."""

from __future__ import annotations

import torch
from torch import Tensor


def token_logps(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under ``logits``: (..., V), (...) -> (...), computed in float32."""
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the last dim where ``mask``: (B, L), (B, L) -> (B,)."""
    return (values * mask).sum(-1)
