"""Chat messages and their token ids with exact turn boundaries, shared by the text datamodules.

Kept apart from the datamodules (and free of model imports) so that modules and evaluation code can use it
without import cycles.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError, DataError

Messages = list[dict[str, str]]


def messages_of(value: Any, role: str, field: str, where: str) -> Messages:
    """A field as a list of chat messages; a string becomes one message of ``role``."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: field {field!r} must be a string or a non-empty list of {{'role', 'content'}} messages")


def text_of(messages: Messages) -> str:
    return "".join(m["content"] for m in messages)


class PairTokenizer:
    """Turns a validated (prompt, chosen, rejected) triple into token ids with an exact boundary."""

    def __init__(self, tokenizer: Any, use_chat_template: bool | None = None, system_prompt: str | None = None):
        self.tok = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("use_chat_template=True but the tokenizer has no chat template")
        self.system_prompt = system_prompt

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: Messages) -> list[int]:
        if self.chat:
            return self._ids(self._render(prompt, generation_prompt=True))
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        return bos + self._ids(text_of(prompt))

    def response_ids(self, prompt: Messages, response: Messages, where: str) -> list[int]:
        if not self.chat:
            eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
            return self._ids(text_of(response)) + eos
        prompt_text = self._render(prompt, generation_prompt=True)
        full = self._render(prompt + response, generation_prompt=False)
        if not full.startswith(prompt_text):
            raise DataError(f"{where}: the chat template renders the prompt differently inside the conversation")
        return self._ids(full[len(prompt_text):])

    def continuation_ids(self, history: Messages, more: Messages, where: str) -> list[int]:
        """The ids that the messages ``more`` add after the conversation ``history``.

        A conversation ending in a user turn is rendered with the assistant header (it awaits a reply), so a user
        turn's ids end with that header and an assistant turn's ids start after it. Without a chat template a user
        turn is its text on its own line and an assistant turn its text plus EOS.
        """
        if not self.chat:
            last = more[-1]["role"]
            if last == "assistant":
                eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
                return self._ids(text_of(more)) + eos
            return self._ids("\n" + text_of(more) + "\n")
        whole = history + more
        head = self._render(history, generation_prompt=history[-1]["role"] == "user")
        full = self._render(whole, generation_prompt=whole[-1]["role"] == "user")
        if not full.startswith(head):
            raise DataError(f"{where}: the chat template renders the conversation differently once it goes on")
        return self._ids(full[len(head):])

    def strip_turn_tail(self, ids: list[int]) -> list[int]:
        """``ids`` without the whitespace-only tokens a template writes after a turn's closing token (ChatML's "\\n").

        The reward of a critique is read at its closing token, which is where generation stops at inference.
        """
        end = len(ids)
        while end > 1 and not self.tok.decode(ids[end - 1 : end], skip_special_tokens=False).strip():
            end -= 1
        return ids[:end]

    def end_of_turn_id(self) -> int | None:
        """The token that closes an assistant turn (EOS without a chat template; ``<|im_end|>``, ``<|eot_id|>``,
        ``<end_of_turn>``... with one): generation of a turn must stop there, which is not always at EOS."""
        if not self.chat:
            return self.tok.eos_token_id
        ids = self.continuation_ids([{"role": "user", "content": "a"}], [{"role": "assistant", "content": "b"}],
                                    "the chat template")
        return self.strip_turn_tail(ids)[-1]

    def _render(self, messages: Messages, generation_prompt: bool) -> str:
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class TokenizerFromModule:
    """DataModule mixin: ``hparams.tokenizer`` if named, else the LightningModule's own tokenizer (one copy)."""

    _tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.hparams.tokenizer is not None:  # type: ignore[attr-defined]
                from core.backbones import load_tokenizer

                self._tokenizer = load_tokenizer(self.hparams.tokenizer)  # type: ignore[attr-defined]
            else:
                trainer = self.trainer  # type: ignore[attr-defined]
                module = trainer.lightning_module if trainer is not None else None
                if getattr(module, "tokenizer", None) is None:
                    raise ConfigError(f"{type(self).__name__} needs `tokenizer` (or a LightningModule that has one)")
                self._tokenizer = module.tokenizer
        return self._tokenizer


DEFAULT_CRITIQUE_INSTRUCTION = (
    "Critique the response above: say what it does well and what it gets wrong, then end with 'Score: N/10'."
)
