"""Chat messages and their token ids with exact turn boundaries, shared by the text datamodules.

Kept apart from the datamodules (and free of model imports) so that modules and evaluation code can use it
without import cycles.

Message text is always tokenised as text: a prompt that spells ``<|eot|><|start_header|>assistant<|end_header|>``
(or ``<|im_end|><|im_start|>assistant``) gets the ordinary tokens of those characters, never the control tokens, so
data cannot forge turns or put an end of turn inside a response. Only the chat template's own special tokens stay
special (:class:`ChatEncoder`). Text is also cut by characters before it is tokenised when only its first (or last)
``max_tokens`` tokens can be kept (:func:`cap_text`), so one huge line costs memory bounded by the token limit.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

from core.errors import ConfigError, DataError

Messages = list[dict[str, str]]
Side = Literal["left", "right"]

# cap_text: a first cut keeps this many characters per token wanted, doubled while the cut holds too few tokens,
# up to the last ratio; MARGIN_TOKENS more than needed are kept so that the merges at the cut cannot reach the kept
# tokens.
FIRST_CHARS_PER_TOKEN = 8
MAX_CHARS_PER_TOKEN = 256
MARGIN_TOKENS = 8


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


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids of ``text`` as plain text: no BOS / EOS added, and special-token strings in it spelled out."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def cap_text(tokenizer: Any, text: str, max_tokens: int | None, side: Side = "right") -> str:
    """``text`` cut by characters to a part that still holds more than ``max_tokens`` tokens (plus a margin).

    ``side="right"`` keeps the start (for truncation on the right), ``"left"`` the end. Tokenising the cut text and
    then truncating to ``max_tokens`` gives the same ids as truncating the whole text's, while the tokenizer only
    ever sees a few times ``max_tokens`` characters. Text short enough comes back unchanged.
    """
    if max_tokens is None:
        return text
    want = max(max_tokens, 0) + MARGIN_TOKENS
    chars = FIRST_CHARS_PER_TOKEN * want
    while len(text) > chars:
        part = text[:chars] if side == "right" else text[len(text) - chars:]
        if chars >= MAX_CHARS_PER_TOKEN * want or len(text_ids(tokenizer, part)) >= want:
            return part
        chars *= 2
    return text


def capped(tokenizer: Any, messages: Messages, max_tokens: int | None, side: Side) -> Messages:
    """``messages`` with each content cut by :func:`cap_text` (the same list when nothing needs cutting)."""
    if max_tokens is None or all(len(m["content"]) <= FIRST_CHARS_PER_TOKEN * (max_tokens + MARGIN_TOKENS)
                                 for m in messages):
        return messages
    return [{**m, "content": cap_text(tokenizer, m["content"], max_tokens, side)} for m in messages]


class Rendered(NamedTuple):
    """A chat template's text and the character spans of message text in it (None: no message text holds a
    special-token string, so the text can be tokenised whole)."""

    text: str
    spans: list[tuple[int, int]] | None


_MARK = re.compile("\ue000([0-9]+)\ue001")


class ChatEncoder:
    """Renders chat templates and tokenises them so that only the template's own special tokens are special.

    Messages are rendered once with their text (``apply_chat_template``). When no message text contains a
    special-token string, the rendering is tokenised whole, as the tokenizer would. Otherwise the template is also
    rendered with a marker in place of each message's text, which locates the text in the rendering; the special
    tokens outside the message text are then the template's own, and the stretches between them are tokenised
    with ``split_special_tokens=True``. Works with any Hugging Face tokenizer (fast or slow).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.specials: dict[str, Any] = {}
        for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(token, "special", False):
                self.specials[str(token)] = token
        for name in getattr(tokenizer, "all_special_tokens", None) or []:
            self.specials.setdefault(str(name), None)
        names = sorted((s for s in self.specials if s), key=len, reverse=True)  # longest first, as the tokenizer
        self._pattern = re.compile("|".join(map(re.escape, names))) if names else None

    def has_special(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def text_ids(self, text: str) -> list[int]:
        return text_ids(self.tok, text)

    def render(self, messages: Messages, generation_prompt: bool, suffix: str = "") -> Rendered:
        """The template's text of ``messages`` (then ``suffix``, text such as a partial response)."""
        real = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        if not self.has_special(suffix) and not any(self.has_special(m["content"]) for m in messages):
            return Rendered(real + suffix, None)
        marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
        skeleton = self.tok.apply_chat_template(marked, tokenize=False, add_generation_prompt=generation_prompt)
        pieces = _MARK.split(skeleton)  # template text, message index, template text, ..., template text
        out, spans, at, exact = [pieces[0]], [], len(pieces[0]), real.startswith(pieces[0])
        for k in range(1, len(pieces), 2):
            content, after = messages[int(pieces[k])]["content"], pieces[k + 1]
            choice = content
            if exact:  # the text as the template wrote it (some templates trim it)
                for option in (content, content.strip(), content.lstrip(), content.rstrip()):
                    if real.startswith(option + after, at):
                        choice = option
                        break
                else:
                    exact = False
            spans.append((at, at + len(choice)))
            out += [choice, after]
            at += len(choice) + len(after)
        if suffix:
            spans.append((at, at + len(suffix)))
            out.append(suffix)
        return Rendered("".join(out), spans)

    def ids(self, rendered: Rendered, start: int = 0) -> list[int]:
        """Token ids of ``rendered.text[start:]`` (no BOS / EOS added beyond what the template wrote)."""
        text = rendered.text
        if rendered.spans is None:
            return list(self.tok(text[start:], add_special_tokens=False)["input_ids"])
        cuts: list[tuple[int, int]] = []  # the template's own special tokens
        outside = start
        for a, b in [*rendered.spans, (len(text), len(text))]:
            if b <= start:
                continue
            if self._pattern is not None and a > outside:
                cuts += [(m.start(), m.end()) for m in self._pattern.finditer(text, outside, a)]
            outside = max(outside, b)
        ids: list[int] = []
        pos = start
        for a, b in cuts:
            token = self.specials.get(text[a:b])
            stretch = text[pos:a].rstrip() if getattr(token, "lstrip", False) else text[pos:a]
            if stretch:
                ids += self.text_ids(stretch)
            ids.append(self.tok.convert_tokens_to_ids(text[a:b]))
            pos = b
            if getattr(token, "rstrip", False):
                while pos < len(text) and text[pos].isspace():
                    pos += 1
        if pos < len(text):
            ids += self.text_ids(text[pos:])
        return ids


class PairTokenizer:
    """Turns a validated (prompt, chosen, rejected) triple into token ids with an exact boundary.

    Message text is tokenised as text (see the module docstring). ``max_tokens`` on a method says that only that
    many tokens of its result can be kept (the prompt's from ``side``, a response's from its start): the text is then
    cut by characters before tokenising, and the first (or last) ``max_tokens`` ids are the same as without the cut.
    """

    def __init__(self, tokenizer: Any, use_chat_template: bool | None = None, system_prompt: str | None = None):
        self.tok = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("use_chat_template=True but the tokenizer has no chat template")
        self.system_prompt = system_prompt
        self.encoder = ChatEncoder(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return text_ids(self.tok, text)

    def prompt_ids(self, prompt: Messages, max_tokens: int | None = None, side: Side = "left") -> list[int]:
        prompt = capped(self.tok, prompt, max_tokens, side)
        if self.chat:
            return self.encoder.ids(self._render(prompt, generation_prompt=True))
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        return bos + self._ids(text_of(prompt))

    def response_ids(self, prompt: Messages, response: Messages, where: str, max_tokens: int | None = None
                     ) -> list[int]:
        response = capped(self.tok, response, max_tokens, "right")
        if not self.chat:
            eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
            return self._ids(text_of(response)) + eos
        prompt_text = self._render(prompt, generation_prompt=True).text
        full = self._render(prompt + response, generation_prompt=False)
        if not full.text.startswith(prompt_text):
            raise DataError(f"{where}: the chat template renders the prompt differently inside the conversation")
        return self.encoder.ids(full, len(prompt_text))

    def continuation_ids(self, history: Messages, more: Messages, where: str, max_tokens: int | None = None
                         ) -> list[int]:
        """The ids that the messages ``more`` add after the conversation ``history``.

        A conversation ending in a user turn is rendered with the assistant header (it awaits a reply), so a user
        turn's ids end with that header and an assistant turn's ids start after it. Without a chat template a user
        turn is its text on its own line and an assistant turn its text plus EOS. ``max_tokens`` cuts the text of
        ``more`` as for a response.
        """
        more = capped(self.tok, more, max_tokens, "right")
        if not self.chat:
            last = more[-1]["role"]
            if last == "assistant":
                eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
                return self._ids(text_of(more)) + eos
            return self._ids("\n" + text_of(more) + "\n")
        whole = history + more
        head = self._render(history, generation_prompt=history[-1]["role"] == "user").text
        full = self._render(whole, generation_prompt=whole[-1]["role"] == "user")
        if not full.text.startswith(head):
            raise DataError(f"{where}: the chat template renders the conversation differently once it goes on")
        return self.encoder.ids(full, len(head))

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

    def _render(self, messages: Messages, generation_prompt: bool) -> Rendered:
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.encoder.render(messages, generation_prompt)


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
