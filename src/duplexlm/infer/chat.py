"""A conversation as a prompt: the tokenizer's chat template when it has one, a plain fallback otherwise.

:func:`chat_prompt` renders the messages for the model to continue as the assistant, and says where the
assistant's turn ends: the template's end-of-turn tokens (``<|im_end|>`` for ChatML) or, for the
plain ``User:`` / ``Assistant:`` fallback, the string that would begin the next user turn. Both the
``duplex chat`` command and a server's chat endpoint use it.

>>> from duplexlm.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["你好"] * 20, "bpe", vocab_size=280, num_sentinels=0)
>>> p = chat_prompt(tok, [{"role": "user", "content": "你好"}])
>>> p.text, p.stop, p.stop_token_ids == (tok.token_to_id("<|im_end|>"),)
('<|im_start|>user\\n你好<|im_end|>\\n<|im_start|>assistant\\n', (), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
"""End-of-turn tokens of common chat templates (ChatML, Llama 3, Phi-3, Gemma): generation stops at any
the vocabulary has."""


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]  # stop strings
    stop_token_ids: tuple[int, ...]
    templated: bool  # False: the plain fallback


def has_chat_template(tokenizer: Any) -> bool:
    """A ``chat_template`` in the tokenizer config, or ChatML's turn tokens in the vocabulary."""
    return tokenizer.config.get("chat_template") is not None or all(
        tokenizer.token_to_id(t) is not None for t in ("<|im_start|>", "<|im_end|>"))


def chat_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> ChatPrompt:
    """Render ``messages`` (``{"role": "system" | "user" | "assistant", "content": ...}``) ready for the
    assistant's next turn."""
    if not messages:
        raise ConfigError("messages: expected at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"messages[{i}]: expected a dict with string 'role' and 'content'")
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
        ids = tuple(i for t in END_OF_TURN if (i := tokenizer.token_to_id(t)) is not None)
        return ChatPrompt(text, (), ids, True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return ChatPrompt("\n".join(lines) + "\nAssistant:", ("\nUser:",), (), False)


__all__ = ["END_OF_TURN", "ChatPrompt", "chat_prompt", "has_chat_template"]
