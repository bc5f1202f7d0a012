"""Policy sampling backends for instruction-following preference data (Kim et al. 2025, NAACL).

Kim et al. 2025, "A Systematic Examination of Preference Learning through the Lens of Instruction-Following",
build preference pairs by sampling the policy: rejection sampling draws whole responses, MCTS draws one segment at
a time from a partial response. Both talk to a :class:`Generator`:

``generate(prompts, n, max_new_tokens, prefixes=None, stop=None) -> list[list[str]]``
    ``n`` continuations of each prompt's response. ``prefixes[i]`` (default ``""``) is the partial response that
    prompt ``i``'s continuations continue; the returned strings are the *continuations only* (the prefix is not
    repeated). With ``stop``, each continuation is cut just after the first stop string it contains (the stop
    string is kept, so ``prefix + segment + next segment`` rebuilds the text the model produced).

Backends:

- :class:`HFGenerator` (default): batched Hugging Face ``generate`` with the tokenizer's chat template, left
  padding, temperature / top-p sampling, stop strings and ``skip_special_tokens=True``. Each call is seeded from
  ``seed`` and its inputs, so a rerun of the same call (for example after a resumed run) samples the same text.
- :class:`VLLMGenerator`: the optional vLLM backend for large runs (``pip install vllm``).

:func:`generate_with_retries` turns a backend's failures into per-prompt :class:`GenerationFailure` values after
``retries`` further attempts, so that callers record failed prompts instead of dropping them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.chat import ChatEncoder, text_ids
from core.errors import MissingExtraError

__all__ = [
    "Generator",
    "GenerationFailure",
    "HFGenerator",
    "VLLMGenerator",
    "build_generator",
    "cut_at_stop",
    "generate_with_retries",
    "prompt_ids",
    "render_prompt",
]


@runtime_checkable
class Generator(Protocol):
    """A sampling policy: ``n`` continuations per prompt, each continuing ``prefixes[i]`` (see the module doc)."""

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        prefixes: list[str] | None = None,
        stop: list[str] | None = None,
    ) -> list[list[str]]: ...


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to and including the earliest occurrence of any stop string (unchanged when none occurs)."""
    if not stop:
        return text
    best: int | None = None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return text if best is None else text[:best]


def _check_args(prompts: Sequence[str], n: int, max_new_tokens: int, prefixes: Sequence[str] | None) -> list[str]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prefixes is None:
        return [""] * len(prompts)
    if len(prefixes) != len(prompts):
        raise ValueError(f"got {len(prefixes)} prefixes for {len(prompts)} prompts")
    return list(prefixes)


def _call_seed(seed: int, *parts: Any) -> int:
    digest = hashlib.sha256(json.dumps([seed, *parts], ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def render_prompt(tokenizer: Any, prompt: str, prefix: str = "") -> str:
    """The model's input text: the chat-templated prompt with the generation prompt, then the response ``prefix``.

    One rendering for every backend, so HF and vLLM continue exactly the same text.
    """
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:  # a base model without a template: the prompt on its own line
        head = prompt + "\n"
    return head + prefix


def prompt_ids(tokenizer: Any, prompt: str, prefix: str = "", encoder: ChatEncoder | None = None) -> list[int]:
    """The token ids of :func:`render_prompt`'s text, with the prompt and the prefix tokenised as text.

    Special-token strings in the prompt or the prefix (``<|im_end|><|im_start|>assistant``...) stay characters, so
    a prompt cannot forge a turn; only the chat template's own control tokens are special (:class:`ChatEncoder`).
    """
    if not getattr(tokenizer, "chat_template", None):
        return text_ids(tokenizer, prompt + "\n" + prefix)
    encoder = encoder if encoder is not None else ChatEncoder(tokenizer)
    return encoder.ids(encoder.render([{"role": "user", "content": prompt}], True, suffix=prefix))


class HFGenerator:
    """Batched sampling with Hugging Face ``generate`` (the default backend).

    ``model_name`` is any name :func:`core.backbones.build_causal_lm` accepts (a tiny preset such as
    ``tiny-llama``, ``hf:<id>`` or a local folder). The prompt is rendered with the tokenizer's chat template
    (``add_generation_prompt=True``), the response prefix is appended as text, and the whole is tokenised with
    ``add_special_tokens=False``, the prompt and prefix as text (:func:`prompt_ids`); rows are left-padded into
    batches of ``batch_size`` (prompt, prefix) inputs, each sampling ``n`` continuations. ``temperature=0`` means
    greedy decoding.
    """

    def __init__(
        self,
        model_name: str = "tiny-llama",
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "cpu",
        dtype: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from core.backbones import build_causal_lm, load_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name)
        self.tokenizer.padding_side = "left"
        if model is None:
            model = build_causal_lm(model_name, dtype=dtype, seed=seed)
        self.model = model.to(device).eval()

    def render(self, prompt: str, prefix: str = "") -> str:
        return render_prompt(self.tokenizer, prompt, prefix)

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        prefixes: list[str] | None = None,
        stop: list[str] | None = None,
    ) -> list[list[str]]:
        import torch

        prefixes = _check_args(prompts, n, max_new_tokens, prefixes)
        texts = [self.render(p, x) for p, x in zip(prompts, prefixes, strict=True)]
        out: list[list[str]] = []
        sample = self.temperature > 0
        encoder = ChatEncoder(self.tokenizer)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            rows = [prompt_ids(self.tokenizer, p, x, encoder)
                    for p, x in zip(prompts[start : start + self.batch_size], prefixes[start : start + self.batch_size],
                                    strict=True)]
            enc = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt").to(self.device)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            if sample:
                kwargs.update(temperature=self.temperature, top_p=self.top_p)
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
            with torch.random.fork_rng(devices=[] if self.device == "cpu" else None):
                torch.manual_seed(_call_seed(self.seed, batch, n, max_new_tokens, stop))
                with torch.no_grad():
                    ids = self.model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            decoded = [cut_at_stop(t, stop) for t in decoded]
            out.extend(decoded[i * n : (i + 1) * n] for i in range(len(batch)))
        return out


class VLLMGenerator:
    """The optional vLLM backend (``pip install vllm``); same contract as :class:`HFGenerator`.

    ``model_name`` is a hub id or local folder (an ``hf:`` prefix is accepted and dropped).
    """

    def __init__(
        self,
        model_name: str,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as err:
            raise MissingExtraError(
                "VLLMGenerator needs the optional vLLM backend: pip install vllm (or use HFGenerator)"
            ) from err
        self._vllm = vllm
        self.model_name = model_name.removeprefix("hf:")
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.llm = vllm.LLM(model=self.model_name, seed=seed, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        prefixes: list[str] | None = None,
        stop: list[str] | None = None,
    ) -> list[list[str]]:
        prefixes = _check_args(prompts, n, max_new_tokens, prefixes)
        texts = [render_prompt(self.tokenizer, p, x) for p, x in zip(prompts, prefixes, strict=True)]
        encoder = ChatEncoder(self.tokenizer)
        inputs = [{"prompt_token_ids": prompt_ids(self.tokenizer, p, x, encoder)}  # text stays text (prompt_ids)
                  for p, x in zip(prompts, prefixes, strict=True)]
        params = self._vllm.SamplingParams(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_new_tokens,
            stop=list(stop) if stop else None,
            include_stop_str_in_output=True,
            skip_special_tokens=True,
            seed=_call_seed(self.seed, texts, n, max_new_tokens, stop),
        )
        results = self.llm.generate(inputs, params, use_tqdm=False)
        return [[cut_at_stop(o.text, stop) for o in r.outputs] for r in results]


def build_generator(
    backend: str = "hf",
    model_name: str = "tiny-llama",
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> Generator:
    """A backend by name: ``hf`` (:class:`HFGenerator`) or ``vllm`` (:class:`VLLMGenerator`)."""
    if backend == "hf":
        return HFGenerator(model_name, temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                           device=device)
    if backend == "vllm":
        return VLLMGenerator(model_name, temperature=temperature, top_p=top_p, seed=seed)
    raise ValueError(f"unknown generation backend {backend!r}: expected 'hf' or 'vllm'")


@dataclass(frozen=True)
class GenerationFailure:
    """A prompt whose generation failed ``attempts`` times; ``error`` is the last error's message."""

    error: str
    attempts: int


def _valid(result: Any, n_prompts: int, n: int) -> list[list[str]]:
    if not isinstance(result, list) or len(result) != n_prompts:
        raise ValueError(f"generator returned {type(result).__name__} of the wrong length (expected {n_prompts} lists)")
    for row in result:
        if not isinstance(row, list) or len(row) != n or not all(isinstance(t, str) for t in row):
            raise ValueError(f"generator returned a row that is not a list of {n} strings")
    return result


def generate_with_retries(
    generator: Generator,
    prompts: list[str],
    n: int,
    max_new_tokens: int,
    prefixes: list[str] | None = None,
    stop: list[str] | None = None,
    retries: int = 2,
) -> list[list[str] | GenerationFailure]:
    """Generate for all prompts at once; if that fails, per prompt with up to ``1 + retries`` attempts each.

    A malformed answer (wrong number of rows or continuations) counts as a failure. A prompt that still fails is
    returned as a :class:`GenerationFailure` in its place, never dropped.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if not prompts:
        return []
    try:
        result = generator.generate(prompts, n, max_new_tokens, prefixes=prefixes, stop=stop)
        return list(_valid(result, len(prompts), n))
    except Exception:  # noqa: BLE001 - retried per prompt below
        pass
    out: list[list[str] | GenerationFailure] = []
    for i, prompt in enumerate(prompts):
        prefix = None if prefixes is None else [prefixes[i]]
        last: Exception | None = None
        for _ in range(1 + retries):
            try:
                out.append(_valid(generator.generate([prompt], n, max_new_tokens, prefixes=prefix, stop=stop), 1, n)[0])
                break
            except Exception as err:  # noqa: BLE001 - recorded, not raised
                last = err
        else:
            out.append(GenerationFailure(f"{type(last).__name__}: {last}", 1 + retries))
    return out
