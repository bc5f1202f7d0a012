"""Prefix-tuning for a frozen BERT-style encoder: per-layer key/value prefixes, pooling and batched k-prefix extraction.

Huang et al. (Findings of EMNLP 2023) train one prefix per source task on a frozen encoder and represent a text by
combining its pooled representations under all the prefixes. The prefix itself is Li & Liang's (2021): each layer's
self-attention gets ``P`` extra key/value vectors that every text token attends to; the prefix positions produce no
hidden states of their own.

Mechanism (no PEFT needed): a fresh :class:`~transformers.DynamicCache` is filled with the prefix keys/values before
every forward; BERT's self-attention does ``key, value = cache.update(key, value, layer)``, i.e. concatenates
``[prefix ; text]`` along the key axis, with a 2D attention mask of length ``P + T``. Works with ``sdpa`` and ``eager``
attention. Text positions are shifted by the prefix length (what ``BertModel`` does with a cache, and what PEFT and
P-tuning v2 do), so a text may hold at most ``max_position_embeddings - P`` tokens; longer ones are truncated with one
warning that gives the count.

Reparameterisation (Li & Liang 2021, P-tuning v2): an embedding of the ``P`` positions goes through an MLP to
``2 x layers x hidden``. The MLP only helps optimisation: after training :meth:`PrefixEncoder.materialize` evaluates it
once and keeps the resulting key/value tensors (:class:`Prefix`), which is all that inference and the registry need.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from core.errors import ConfigError
from core.heads import Pooling, pool

Combine = Literal["concat", "mean"]
Text = str | tuple[str, str]  # one text, or a (text, text pair)


@dataclass(frozen=True)
class PrefixShape:
    """What a prefix must match in the encoder it is applied to."""

    layers: int
    heads: int
    head_dim: int

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def of(cls, encoder: nn.Module) -> PrefixShape:
        """The shape of ``encoder`` (a BERT-style Hugging Face model); a :class:`ConfigError` for other models."""
        config = getattr(encoder, "config", None)
        if config is None or getattr(config, "model_type", None) != "bert" or getattr(config, "is_decoder", False):
            kind = getattr(config, "model_type", type(encoder).__name__)
            raise ConfigError(f"prefix injection is implemented for BERT-style encoders (model_type 'bert'), "
                              f"got {kind!r}")
        heads = config.num_attention_heads
        return cls(layers=config.num_hidden_layers, heads=heads, head_dim=config.hidden_size // heads)


@dataclass
class Prefix:
    """A materialised prefix: the key/value vectors of every layer, no MLP. ``keys``/``values``: (L, H, P, D)."""

    keys: Tensor  # (L, H, P, D)
    values: Tensor  # (L, H, P, D)
    name: str = ""

    def __post_init__(self) -> None:
        if self.keys.ndim != 4 or self.keys.shape != self.values.shape:
            raise ConfigError(
                f"prefix {self.name!r}: keys and values must both be (layers, heads, length, head_dim), "
                f"got {tuple(self.keys.shape)} and {tuple(self.values.shape)}"
            )

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    @property
    def shape(self) -> PrefixShape:
        layers, heads, _, head_dim = self.keys.shape
        return PrefixShape(layers=layers, heads=heads, head_dim=head_dim)

    def check(self, encoder: nn.Module) -> None:
        """A :class:`ConfigError` unless layers / heads / head_dim match ``encoder``."""
        want, have = PrefixShape.of(encoder), self.shape
        if want != have:
            raise ConfigError(
                f"prefix {self.name!r} was made for an encoder with {have.layers} layers, {have.heads} heads of size "
                f"{have.head_dim}; this encoder has {want.layers} layers, {want.heads} heads of size {want.head_dim}"
            )


class PrefixEncoder(nn.Module):
    """The trainable prefix: direct key/value parameters, or an MLP over ``P`` position embeddings.

    Args:
        shape: the encoder's layers / heads / head_dim (:meth:`PrefixShape.of`).
        length: prefix length ``P``.
        reparameterize: MLP reparameterisation (Li & Liang 2021): ``Embedding(P, hidden) -> Linear(hidden,
            prefix_hidden) -> tanh -> Linear(prefix_hidden, 2 * layers * hidden)``. Otherwise the (2, L, H, P, D)
            tensor is the parameter (initialised N(0, 1), the scale of P-tuning v2's direct prefix embedding).
        prefix_hidden: width of the MLP.
    """

    def __init__(self, shape: PrefixShape, length: int = 8, reparameterize: bool = True, prefix_hidden: int = 128):
        super().__init__()
        if length < 1:
            raise ConfigError(f"prefix_length must be >= 1, got {length}")
        self.shape, self.length, self.reparameterize = shape, length, reparameterize
        if reparameterize:
            self.embedding = nn.Embedding(length, shape.hidden)
            out = 2 * shape.layers * shape.hidden
            self.mlp = nn.Sequential(nn.Linear(shape.hidden, prefix_hidden), nn.Tanh(), nn.Linear(prefix_hidden, out))
        else:
            self.kv = nn.Parameter(torch.randn(2, shape.layers, shape.heads, length, shape.head_dim))

    def forward(self) -> tuple[Tensor, Tensor]:
        """``(keys, values)``, each (L, H, P, D)."""
        if not self.reparameterize:
            return self.kv[0], self.kv[1]
        s = self.shape
        flat = self.mlp(self.embedding.weight)  # (P, 2 * L * H * D)
        kv = flat.view(self.length, 2, s.layers, s.heads, s.head_dim).permute(1, 2, 3, 0, 4)  # (2, L, H, P, D)
        return kv[0], kv[1]

    @torch.no_grad()
    def materialize(self, name: str = "") -> Prefix:
        """Evaluate the MLP once and keep only the key/value tensors (float32, CPU): the MLP can then be dropped."""
        keys, values = self()
        return Prefix(keys.detach().float().cpu().clone(), values.detach().float().cpu().clone(), name=name)


def position_limit(encoder: nn.Module, prefix_length: int) -> int:
    """Most text tokens that fit: ``max_position_embeddings - P`` (positions are shifted by the prefix length)."""
    limit = encoder.config.max_position_embeddings - prefix_length
    if limit < 1:
        raise ConfigError(
            f"prefix length {prefix_length} leaves no room for text: max_position_embeddings is "
            f"{encoder.config.max_position_embeddings}"
        )
    return limit


def encode(
    encoder: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    keys: Tensor | None = None,
    values: Tensor | None = None,
    prefix_mask: Tensor | None = None,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    """Last hidden states of the text tokens (B, T, hidden), with a per-row prefix when ``keys`` is given.

    ``keys``/``values``: (L, B, H, P, D) or (L, H, P, D) for one prefix shared by the batch. ``prefix_mask`` (B, P)
    marks real prefix slots (1) and padding slots (0) of prefixes shorter than ``P``; each row's text positions start
    at its own real prefix length. The caller guarantees ``T <= max_position_embeddings - P``.
    """
    batch, length = input_ids.shape  # (B, T)
    if keys is None:
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state  # (B, T, hidden)
    if keys.ndim == 4:  # (L, H, P, D): the same prefix for every row
        keys = keys.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (L, B, H, P, D)
        values = values.unsqueeze(1).expand(-1, batch, -1, -1, -1)
    dtype = compute_dtype(encoder)
    keys, values = keys.to(input_ids.device, dtype), values.to(input_ids.device, dtype)  # (L, B, H, P, D)
    n_prefix = keys.shape[3]
    if prefix_mask is None:
        prefix_mask = attention_mask.new_ones(batch, n_prefix)  # (B, P)
    cache = DynamicCache(config=encoder.config)
    for layer in range(keys.shape[0]):
        cache.update(keys[layer], values[layer], layer)  # fills layer `layer` with (B, H, P, D)
    mask = torch.cat([prefix_mask.to(attention_mask), attention_mask], dim=1)  # (B, P + T)
    shift = prefix_mask.sum(dim=1, keepdim=True).long()  # (B, 1): real prefix length of each row
    position_ids = shift + torch.arange(length, device=input_ids.device)  # (B, T)
    out = encoder(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids, position_ids=position_ids,
                  **{_cache_kwarg(encoder): cache})
    return out.last_hidden_state  # (B, T, hidden)


def compute_dtype(encoder: nn.Module) -> torch.dtype:
    """The dtype ``encoder`` computes in, which the prefix keys/values must have: FSDP2's ``param_dtype`` when the
    encoder is sharded with mixed precision (its parameters then stay fp32 while the attention runs in e.g. bf16, and
    FSDP casts tensor inputs only, not the cache), else its parameters' dtype."""
    get_state = getattr(encoder, "_get_fsdp_state", None)  # torch.distributed.fsdp.FSDPModule
    if callable(get_state):
        dtype = getattr(getattr(get_state(), "_mp_policy", None), "param_dtype", None)
        if dtype is not None:
            return dtype
    return next(encoder.parameters()).dtype


def _cache_kwarg(encoder: nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or its older name ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(type(encoder).forward).parameters else "past_key_values"


def warn_truncated(count: int, total: int, limit: int, reason: str) -> None:
    """One warning for a whole call, with the number of texts cut."""
    if count:
        warnings.warn(f"{count} of {total} texts were longer than {limit} tokens and were truncated ({reason})",
                      stacklevel=3)


def stack_prefixes(prefixes: Sequence[Prefix], batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """k prefixes -> batch-stacked ``keys``, ``values`` (L, k*B, H, Pmax, D) and ``prefix_mask`` (k*B, Pmax).

    Row ``i * B + b`` carries prefix ``i`` for text ``b``. Prefixes shorter than the longest are padded at their end
    with zero slots that the mask hides, so one pass serves prefixes of any lengths.
    """
    p_max = max(p.length for p in prefixes)
    keys, values, masks = [], [], []
    for p in prefixes:
        pad = p_max - p.length
        k = nn.functional.pad(p.keys, (0, 0, 0, pad))  # (L, H, Pmax, D)
        v = nn.functional.pad(p.values, (0, 0, 0, pad))
        keys.append(k.unsqueeze(1).expand(-1, batch, -1, -1, -1))  # (L, B, H, Pmax, D)
        values.append(v.unsqueeze(1).expand(-1, batch, -1, -1, -1))
        masks.append(torch.cat([torch.ones(batch, p.length), torch.zeros(batch, pad)], dim=1))  # (B, Pmax)
    return torch.cat(keys, dim=1), torch.cat(values, dim=1), torch.cat(masks, dim=0).long()


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[Text], limit: int
) -> tuple[dict[str, Tensor], int]:
    """Token ids exactly as the text datamodules build them for training (:class:`~core.text_encoding.TextEncoder`:
    the tokenizer's own special tokens, or ``BOS a EOS [b EOS]``), cut to ``limit`` tokens and right-padded; also
    return how many texts were cut."""
    from core.text_encoding import TextEncoder, TextExample, collate_text

    encode_text = TextEncoder(tokenizer, limit)
    examples = []
    for text in texts:
        ids, types = encode_text(*text) if isinstance(text, tuple) else encode_text(text)
        examples.append(TextExample(ids, 0, types))
    batch = collate_text(examples, tokenizer.pad_token_id, "classification")
    batch.pop("labels")
    return batch, encode_text.truncated


@torch.no_grad()
def extract(
    encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    prefixes: Sequence[Prefix],
    pooling: Pooling = "mean",
    combine: Combine = "concat",
    batch_size: int = 32,
    max_length: int | None = None,
) -> Tensor:
    """Fixed representations of ``texts`` under ``k`` prefixes (Huang et al. 2023): (N, k*D) for ``concat`` (prefix
    ``i`` in columns ``i*D:(i+1)*D``) or (N, D) for ``mean``; with no prefixes, the frozen encoder alone (N, D).

    One forward per batch of ``batch_size`` texts: the batch is repeated k times along the batch axis, each copy
    with its own prefix (so a pass holds ``k * batch_size`` rows). Prefixes of different lengths are padded to the
    longest with masked slots (:func:`stack_prefixes`); every row's positions start after its own prefix. All texts are
    truncated to ``max_position_embeddings - longest P`` (and ``max_length``) so the k views see the same tokens.
    Runs in eval mode under ``torch.no_grad``; returns float32 on the CPU.
    """
    if combine not in ("concat", "mean"):
        raise ConfigError(f"combine must be 'concat' or 'mean', got {combine!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for p in prefixes:
        p.check(encoder)
    p_max = max((p.length for p in prefixes), default=0)
    limit = position_limit(encoder, p_max) if prefixes else encoder.config.max_position_embeddings
    if max_length is not None:
        limit = min(limit, max_length)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    k, out, cut = len(prefixes), [], 0
    try:
        for start in range(0, len(texts), batch_size):
            enc, n_cut = tokenize(tokenizer, texts[start : start + batch_size], limit)
            cut += n_cut
            enc = {key: v.to(device) for key, v in enc.items()}
            batch = enc["input_ids"].shape[0]
            if k == 0:
                hidden = encode(encoder, enc["input_ids"], enc["attention_mask"],
                                token_type_ids=enc.get("token_type_ids"))  # (B, T, D)
                out.append(pool(hidden, enc["attention_mask"], pooling).float().cpu())
                continue
            keys, values, prefix_mask = stack_prefixes(prefixes, batch)  # (L, k*B, H, Pmax, D), (k*B, Pmax)
            rep = {key: v.repeat(k, 1) for key, v in enc.items()}  # (k*B, T)
            hidden = encode(encoder, rep["input_ids"], rep["attention_mask"], keys, values,
                            prefix_mask.to(device), token_type_ids=rep.get("token_type_ids"))  # (k*B, T, D)
            pooled = pool(hidden, rep["attention_mask"], pooling).float().view(k, batch, -1)  # (k, B, D)
            if combine == "mean":
                out.append(pooled.mean(dim=0).cpu())  # (B, D)
            else:
                out.append(pooled.permute(1, 0, 2).reshape(batch, -1).cpu())  # (B, k*D)
    finally:
        encoder.train(was_training)
    reason = f"max_position_embeddings {encoder.config.max_position_embeddings} - prefix length {p_max}"
    if max_length is not None and limit == max_length:
        reason = f"max_length {max_length}"
    warn_truncated(cut, len(texts), limit, reason)
    width = encoder.config.hidden_size * (k if combine == "concat" and k else 1)
    return torch.cat(out) if out else torch.zeros(0, width)

