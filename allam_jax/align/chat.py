"""Chat formatting: conversations → token ids with a loss mask on assistant tokens only.

Input format (Arabic or English, multi-turn)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

The default template is Llama-2-chat's (``ChatTemplate.style``: Llama-3's and ChatML's are presets)::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST] ...

Rendering works piece by piece on token ids, so the mask is exact: every assistant token and the
end-of-turn token (EOS) after it carry weight 1, everything else 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from allam_jax.core.errors import ChatError

ROLES = ("system", "user", "assistant")


STYLES = ("llama2", "turns")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Text around each turn (gin: ``ChatTemplate``; presets in ``gin_configs/chat/``); BOS/EOS come from the
    vocabulary.

    ``style='llama2'`` (default): Llama-2-chat, the system message folded into the first user turn, each answer
    ended by EOS. ``style='turns'``: every message its own turn, ``turn_header`` (``{role}`` replaced) before it,
    ``end_of_turn`` after it (trained on after an answer), ``turn_separator`` between turns: Llama-3
    (``<|start_header_id|>{role}<|end_header_id|>\n\n`` ... ``<|eot_id|>``) and ChatML (Qwen2.5/Qwen3:
    ``<|im_start|>{role}\n`` ... ``<|im_end|>``, ``\n``). ``answer_prefix`` opens the last answer (Qwen3's
    empty think block); ``trim`` strips each message (Llama-3's template does). Every sequence starts with the
    vocabulary's BOS (EOS where it has none, as for Qwen), as the training pipeline expects."""

    user_prefix: str = "[INST] "
    user_suffix: str = " [/INST] "
    system_prefix: str = "<<SYS>>\n"
    system_suffix: str = "\n<</SYS>>\n\n"
    bos_each_turn: bool = True
    style: str = "llama2"
    turn_header: str = ""
    end_of_turn: str = ""
    turn_separator: str = ""
    answer_prefix: str = ""
    trim: bool = False

    def __post_init__(self):
        if self.style not in STYLES:
            raise ChatError(f"ChatTemplate.style must be one of {STYLES}, got {self.style!r}")
        if self.style == "turns" and not (self.turn_header and self.end_of_turn):
            raise ChatError("ChatTemplate.style='turns' needs turn_header and end_of_turn (see gin_configs/chat/)")

    def end_of_turn_ids(self, vocab) -> list[int]:
        """The ids that end an answer: ``end_of_turn``'s, or EOS."""
        return _encode(vocab, self.end_of_turn) if self.style == "turns" else [int(vocab.eos_id)]


LLAMA3 = ChatTemplate(style="turns", turn_header="<|start_header_id|>{role}<|end_header_id|>\n\n",
                      end_of_turn="<|eot_id|>", trim=True)
CHATML = ChatTemplate(style="turns", turn_header="<|im_start|>{role}\n", end_of_turn="<|im_end|>",
                      turn_separator="\n")
QWEN3 = dataclasses.replace(CHATML, answer_prefix="<think>\n\n</think>\n\n")  # thinking off
PRESETS = {"llama2": ChatTemplate(), "llama3": LLAMA3, "chatml": CHATML, "qwen3": QWEN3}


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
    if template.style == "turns":
        return _encode_turns(messages, vocab, template, bos, train_on_all_assistant_turns)
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


def _check_order(turns: Sequence[dict]) -> None:
    previous = None
    for i, m in enumerate(turns):
        if m["role"] == "user" and previous == "user":
            raise ChatError(f"two user turns in a row at turn {i}")
        if m["role"] == "assistant" and previous != "user":
            raise ChatError(f"turn {i}: an assistant turn must follow a user turn")
        previous = m["role"]


def _encode_turns(messages: Sequence[dict], vocab, template: ChatTemplate, bos: int,
                  train_on_all_assistant_turns: bool) -> tuple[list[int], list[int]]:
    """``style='turns'``: header, content, end-of-turn per message; the answer and its end-of-turn trained on."""
    _check_order(messages[1:] if messages[0]["role"] == "system" else messages)
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids, weights = [bos], [0]
    for i, m in enumerate(messages):
        content = m["content"].strip() if template.trim else m["content"]
        head = _encode(vocab, template.turn_header.replace("{role}", m["role"]))
        if m["role"] == "assistant" and i == last_assistant and template.answer_prefix:
            head += _encode(vocab, template.answer_prefix)
        body = _encode(vocab, content) + _encode(vocab, template.end_of_turn)
        trained = m["role"] == "assistant" and (train_on_all_assistant_turns or i == last_assistant)
        sep = _encode(vocab, template.turn_separator) if template.turn_separator else []
        ids += head + body + sep
        weights += [0] * len(head) + [int(trained)] * len(body) + [0] * len(sep)
    return ids, weights


def encode_prompt(messages: Sequence[dict], vocab, template: ChatTemplate, bos: int) -> list[int]:
    """Token ids of a conversation that ends with a user turn, up to where the assistant answer starts."""
    if not messages or messages[-1].get("role") != "user":
        raise ChatError("a prompt must end with a user turn")
    ids, _ = encode_conversation(list(messages) + [{"role": "assistant", "content": "x"}], vocab, template, bos)
    tail = _encode(vocab, "x") + template.end_of_turn_ids(vocab)
    if template.style == "turns" and template.turn_separator:
        tail += _encode(vocab, template.turn_separator)
    return ids[: len(ids) - len(tail)]
