"""UNIREX networks: the task model, the rationale extractors, and token deletion for faithfulness evaluation.

Chan et al. 2022 (ICML), "UNIREX", compare rationale extractors of two families:

- heuristic attribution on the task model's input embeddings, scored against the gold label in training and the
  predicted label at evaluation: ``saliency`` (sum over the embedding of ``|d logit / d x|``), ``input_x_gradient``
  (sum of ``x * d logit / d x``), ``integrated_gradients`` (sum of ``(x - x0) *`` the mean gradient on the straight
  path from the baseline ``x0``, midpoint Riemann sum over ``steps`` points; ``x0`` is the [PAD] embedding on the
  candidate tokens and the input itself on special and query tokens), and ``attention`` (the last layer's attention
  from the first token, averaged over heads);
- learned: a token head (linear or MLP) on a separate encoder, or on the task model's own encoder.

``random`` and ``gold`` (the human rationale) are reference extractors. Networks return scores; the losses live in
``loss.py`` and the LightningModule (``module.py``) only glues them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from core.errors import ConfigError
from core.heads import build_head, pool

Attribution = Literal["saliency", "input_x_gradient", "integrated_gradients"]
ExtractorKind = Literal[
    "learned", "saliency", "input_x_gradient", "integrated_gradients", "attention", "random", "gold"
]
GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
# The forward method of the FSDP unit holding the input embeddings that looks up word embeddings (TaskModel.embed).
EMBED_ENTRY = "unirex_word_embeddings"


class TaskModel(nn.Module):
    """An encoder and a classification head on the pooled first token (``cls``) or the token mean.

    ``num_outputs`` is the number of classes, or 1 for the multiple-choice form (one score per option row; the
    module reshapes the rows' scores to (B, C)). ``forward`` returns ``(logits (N, num_outputs), hidden (N, T, H),
    attentions or None)``.
    """

    def __init__(self, encoder: nn.Module, num_outputs: int, pooling: Literal["cls", "mean"] = "cls",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_outputs)
        self._embed_owner: str | None = None  # the sharded unit holding the embeddings (register_sharded_embed)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Word embeddings of ``input_ids`` (N, T) -> (N, T, H), detached: where attributions are taken.

        Under FSDP2 the lookup runs as a registered forward of the unit that holds the embedding table (see
        :meth:`register_sharded_embed`), which gathers the table around it; elsewhere it reads the table directly.
        """
        with torch.no_grad():  # attributions start from these values; no gradient flows back into the table
            if self._embed_owner is not None:
                return getattr(self.encoder.get_submodule(self._embed_owner), EMBED_ENTRY)(input_ids)
            return self.encoder.get_input_embeddings()(input_ids)

    def register_sharded_embed(self) -> None:
        """Once the encoder is sharded (FSDP2 ``fully_shard``), make :meth:`embed` a forward method of the innermost
        FSDP unit holding the input embeddings (``BertEmbeddings`` when it is its own unit, else the encoder's
        root): only inside a forward does FSDP gather that unit's weights. No-op for an unsharded encoder."""
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        table = self.encoder.get_input_embeddings()
        owners = [(name, m) for name, m in self.encoder.named_modules()
                  if isinstance(m, FSDPModule) and any(sub is table for sub in m.modules())]
        if not owners:
            return
        name, owner = owners[-1]  # named_modules goes outside in: the last one is the innermost
        if self._embed_owner == name:
            return
        owner.__dict__[EMBED_ENTRY] = table.forward  # a plain attribute, not a submodule: state_dict unchanged
        register_fsdp_forward_method(owner, EMBED_ENTRY)
        self._embed_owner = name

    def forward(self, attention_mask: Tensor, input_ids: Tensor | None = None, token_type_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None, output_attentions: bool = False) -> tuple[Tensor, Tensor, object]:
        out = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, output_attentions=output_attentions)
        hidden = out.last_hidden_state  # (N, T, H)
        logits = self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))  # (N, num_outputs)
        return logits, hidden, out.attentions if output_attentions else None


class TokenScorer(nn.Module):
    """A learned extractor: a token head on an encoder's hidden states -> one logit per token (N, T).

    ``encoder=None`` shares the task model's encoder: :meth:`forward` then reads its hidden states.
    """

    def __init__(self, hidden_size: int, head: Literal["linear", "mlp"] = "linear", mlp_hidden: int = 256,
                 dropout: float = 0.1, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = build_head(head, hidden_size, 1, mlp_hidden, dropout)

    def forward(self, hidden: Tensor | None, attention_mask: Tensor, input_ids: Tensor,
                token_type_ids: Tensor | None = None) -> Tensor:
        if self.encoder is not None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state  # (N, T, H)
        return self.head(hidden).squeeze(-1)  # (N, T)


def gradient_attribution(
    score_fn: Callable[[Tensor], Tensor], embeds: Tensor, method: Attribution, baseline: Tensor | None = None,
    steps: int = 8,
) -> Tensor:
    """Token attributions (N, T) of ``score_fn`` (embeddings (M, T, H) -> one score per row (M,)) at ``embeds``.

    Rows are independent, so the gradient of the summed scores gives every row its own gradient. Integrated
    gradients evaluate all ``steps`` path points in one batched call (M = steps * N). Returns detached values.
    """
    embeds = embeds.detach()
    if method == "integrated_gradients":
        if baseline is None:
            raise ValueError("integrated gradients need a baseline")
        if steps < 1:
            raise ConfigError(f"ig_steps must be >= 1, got {steps}")
        alphas = (torch.arange(steps, device=embeds.device, dtype=embeds.dtype) + 0.5) / steps  # (S,)
        delta = embeds - baseline  # (N, T, H)
        path = baseline.unsqueeze(0) + alphas.view(-1, 1, 1, 1) * delta.unsqueeze(0)  # (S, N, T, H)
        path = path.reshape(-1, *embeds.shape[1:]).requires_grad_(True)  # (S*N, T, H)
        (grads,) = torch.autograd.grad(score_fn(path).sum(), path)
        mean_grad = grads.view(steps, *embeds.shape).mean(0)  # (N, T, H)
        return (delta * mean_grad).sum(-1).detach()
    x = embeds.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score_fn(x).sum(), x)  # (N, T, H)
    if method == "saliency":
        return grad.abs().sum(-1).detach()
    if method == "input_x_gradient":
        return (x * grad).sum(-1).detach()
    raise ConfigError(f"unknown attribution method {method!r}: expected one of {GRADIENT_METHODS}")


def attention_scores(attentions: tuple[Tensor, ...]) -> Tensor:
    """The last layer's attention from the first token to every token, averaged over heads: (N, T)."""
    return attentions[-1][:, :, 0, :].mean(1).detach()


def delete_tokens(input_ids: Tensor, keep: Tensor, pad_id: int,
                  token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Inputs with the tokens outside ``keep`` deleted (not masked): the kept tokens move left, in order.

    Evaluation removes tokens this way, as ERASER does, so positions close up; training masks them instead.
    input_ids, keep: (M, T) -> (input_ids (M, T'), attention_mask (M, T'), token_type_ids or None), T' = the
    longest kept row.
    """
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices  # kept positions first, in order
    lengths = keep.sum(-1)  # (M,)
    width = max(int(lengths.max()), 1) if lengths.numel() else 1
    order = order[:, :width]
    mask = torch.arange(width, device=keep.device).unsqueeze(0) < lengths.unsqueeze(1)  # (M, T')
    ids = torch.gather(input_ids, 1, order).masked_fill(~mask, pad_id)
    types = None if token_type_ids is None else torch.gather(token_type_ids, 1, order).masked_fill(~mask, 0)
    return ids, mask.long(), types


def to_words(values: Tensor, word_ids: Tensor, reduce: Literal["amax", "amin"] = "amax") -> tuple[Tensor, Tensor]:
    """Subword values (N, T) -> per-word values (N, W) by ``reduce`` over each word's subwords, and the (N, W) mask
    of words present in the row (a word cut off by truncation is absent). ``word_ids`` (N, T): -1 off documents.

    ERASER scores rationales on document words; a word's soft score is the highest of its subwords' (our choice),
    and a word is in a hard rationale when any of its subwords is.
    """
    n = values.shape[0]
    width = max(int(word_ids.max()) + 1 if word_ids.numel() else 0, 1)
    on = word_ids >= 0
    index = torch.where(on, word_ids, width)  # (N, T): off-document positions go to a spare last column
    fill = float("-inf") if reduce == "amax" else float("inf")
    out = torch.full((n, width + 1), fill, dtype=torch.float32, device=values.device)
    out = out.scatter_reduce(1, index, values.float(), reduce=reduce, include_self=True)[:, :width]
    present = torch.zeros(n, width + 1, dtype=torch.bool, device=values.device).scatter(1, index, True)[:, :width]
    return out.masked_fill(~present, 0.0), present
