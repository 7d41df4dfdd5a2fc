"""Chat formatting: conversations → token ids with a loss mask on assistant tokens only.

Input format (Arabic or English, multi-turn)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

The default template is Llama-2-chat's::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST] ...

Rendering works piece by piece on token ids, so the mask is exact: every assistant token and the
end-of-turn token (EOS) after it carry weight 1, everything else 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from allam_jax.core.errors import ChatError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Text around each turn (gin: ``ChatTemplate``); BOS/EOS come from the vocabulary."""

    user_prefix: str = "[INST] "
    user_suffix: str = " [/INST] "
    system_prefix: str = "<<SYS>>\n"
    system_suffix: str = "\n<</SYS>>\n\n"
    bos_each_turn: bool = True


def validate_messages(messages: Any) -> list[dict]:
    """Checks roles and contents; returns the messages. A conversation must end with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}")
        if not m["content"].strip():
            raise ChatError(f"message {i} ({m['role']}) is empty")
        if m["role"] == "system" and i != 0:
            raise ChatError(f"message {i}: a system message may only come first")
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatError("the conversation has no assistant turn")
    return messages


def _encode(vocab, text: str) -> list[int]:
    return [int(t) for t in vocab.encode(text)]


def encode_conversation(messages: Sequence[dict], vocab, template: ChatTemplate, bos: int,
                        train_on_all_assistant_turns: bool = True) -> tuple[list[int], list[int]]:
    """``(ids, weights)``: ids start with BOS; weights are 1 on assistant tokens and their EOS.

    With ``train_on_all_assistant_turns=False`` only the last assistant turn is trained on.
    """
    messages = validate_messages(list(messages))
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    ids: list[int] = []
    weights: list[int] = []
    last_assistant = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
    pending_user = None
    for i, m in enumerate(turns):
        if m["role"] == "user":
            if pending_user is not None:
                raise ChatError(f"two user turns in a row at turn {i}")
            pending_user = m["content"]
            continue
        if m["role"] != "assistant":
            raise ChatError(f"turn {i}: unexpected role {m['role']!r}")
        if pending_user is None:
            raise ChatError(f"turn {i}: an assistant turn must follow a user turn")
        user = pending_user
        if system is not None and not ids:
            user = template.system_prefix + system + template.system_suffix + user
        prompt = ([bos] if (template.bos_each_turn or not ids) else []) + _encode(
            vocab, template.user_prefix + user + template.user_suffix)
        answer = _encode(vocab, m["content"]) + [int(vocab.eos_id)]
        trained = train_on_all_assistant_turns or i == last_assistant
        ids += prompt + answer
        weights += [0] * len(prompt) + [int(trained)] * len(answer)
        pending_user = None
    return ids, weights


def encode_prompt(messages: Sequence[dict], vocab, template: ChatTemplate, bos: int) -> list[int]:
    """Token ids of a conversation that ends with a user turn, up to where the assistant answer starts."""
    if not messages or messages[-1].get("role") != "user":
        raise ChatError("a prompt must end with a user turn")
    ids, _ = encode_conversation(list(messages) + [{"role": "assistant", "content": "x"}], vocab, template, bos)
    tail = _encode(vocab, "x") + [int(vocab.eos_id)]
    return ids[: len(ids) - len(tail)]
