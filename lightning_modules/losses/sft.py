"""Supervised fine-tuning loss: mean negative log-likelihood of the response tokens."""

from __future__ import annotations

from torch import Tensor

from lightning_modules.losses.logprobs import token_logps


def response_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean NLL of ``targets`` where ``mask``: logits (N, V), targets (N,), mask (N,) -> (loss, metrics).

    ``N`` is any flat set of predicted positions (here: only the positions that predict a response token). The
    mean is over tokens, not sequences, as in Hugging Face's causal-LM loss with ``labels=-100`` on the prompt.
    """
    nll = -token_logps(logits, targets)  # (N,)
    m = mask.to(nll.dtype)
    n_tokens = m.sum()  # the true count (0 when nothing is masked in); only the division is guarded
    loss = (nll * m).sum() / n_tokens.clamp(min=1)
    return loss, {"nll": loss.detach(), "tokens": n_tokens.detach()}
