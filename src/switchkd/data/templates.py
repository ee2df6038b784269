"""Chat templates by name. One template object renders prompts for training, evaluation and chat,
splits a conversation into supervised and unsupervised segments for label masking, and writes the
equivalent Jinja template into saved tokenizers so ``apply_chat_template`` agrees with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

from switchkd.data.records import IMAGE_PLACEHOLDER

ROLES = ("system", "user", "assistant")


def content_text(content, image: str = IMAGE_PLACEHOLDER) -> str:
    """A message's content as text. Plain text stays as it is; structured content (Hugging Face style,
    ``[{"type": "image"}, {"type": "text", "text": "What?"}]``) joins its parts with newlines, each
    image part written as ``image``, so ``[image, text]`` reads like LLaVA data's ``"<image>\nWhat?"``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append(image)
        elif kind == "text":
            parts.append(part["text"])
        else:
            raise ValueError(f"message part {part!r}: only 'image' and 'text' parts are supported")
    return "\n".join(parts)


class Segment(NamedTuple):
    text: str
    supervised: bool
    content: bool


@dataclass(frozen=True)
class ChatTemplate:
    """A turn-based template: ``{start}{role}\\n{content}{end}{sep}`` per message."""

    name: str
    turn_start: str
    turn_end: str
    separator: str
    system_prompt: str | None = None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.turn_end,)

    def header(self, role: str) -> str:
        return f"{self.turn_start}{role}\n"

    def _with_system(self, messages: list[dict]) -> list[dict]:
        for m in messages:
            if m.get("role") not in ROLES:
                raise ValueError(f"message role must be one of {ROLES}, got {m.get('role')!r}")
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def segments(self, messages: list[dict], add_generation_prompt: bool = False) -> list[Segment]:
        """The rendered conversation as pieces whose concatenation is ``render(messages)``. Supervised:
        each assistant reply and its end-of-turn marker. ``content`` marks the messages' own text (never
        control tokens, whatever it contains); the rest is the template's scaffolding."""
        out: list[Segment] = []
        for m in self._with_system(messages):
            reply = m["role"] == "assistant"
            out.append(Segment(self.header(m["role"]), False, False))
            out.append(Segment(content_text(m["content"]), reply, True))
            out.append(Segment(self.turn_end, reply, False))
            out.append(Segment(self.separator, False, False))
        if add_generation_prompt:
            out.append(Segment(self.header("assistant"), False, False))
        return [s for s in out if s.text]

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return "".join(s.text for s in self.segments(messages, add_generation_prompt))

    def jinja(self, image: str = IMAGE_PLACEHOLDER) -> str:
        """The same template for ``apply_chat_template``. An image part of structured content is written
        as ``image``: the ``<image>`` placeholder in switchkd's own tokenizers, the image token in an
        exported LLaVA processor, where a ``<image>`` placeholder in plain content becomes it too."""
        start, end, sep = (json.dumps(s) for s in (self.turn_start, self.turn_end, self.separator))
        system = ""
        if self.system_prompt is not None:
            system = (
                "{%- if messages[0]['role'] != 'system' %}"
                "{{ " + start + " + 'system\\n' + " + json.dumps(self.system_prompt) + " + " + end + " + " + sep + " }}"
                "{%- endif %}"
            )
        text = "message['content']"
        if image != IMAGE_PLACEHOLDER:  # LLaVA-style prompts ("<image>\nWhat?", as lmms-eval writes them)
            text += " | replace(" + json.dumps(IMAGE_PLACEHOLDER) + ", " + json.dumps(image) + ")"
        content = (
            "{%- if message['content'] is string %}{{ " + text + " }}"
            "{%- else %}{%- for part in message['content'] %}"
            "{%- if not loop.first %}{{ '\\n' }}{%- endif %}"
            "{%- if part['type'] == 'image' %}{{ " + json.dumps(image) + " }}"
            "{%- elif part['type'] == 'text' %}{{ part['text'] }}"
            "{%- else %}{{ raise_exception('only image and text parts are supported') }}{%- endif %}"
            "{%- endfor %}{%- endif %}"
        )
        return (
            system + "{%- for message in messages %}"
            "{{ " + start + " + message['role'] + '\\n' }}" + content + "{{ " + end + " + " + sep + " }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{ " + start + " + 'assistant\\n' }}{%- endif %}"
        )


_TEMPLATES = {
    # Qwen2/2.5 (ChatML); the released Switch-KD model uses this with "You are a helpful assistant."
    "chatml": dict(turn_start="<|im_start|>", turn_end="<|im_end|>", separator="\n"),
}


def get_template(name: str, system_prompt: str | None = "You are a helpful assistant.") -> ChatTemplate:
    if name not in _TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; valid: {', '.join(sorted(_TEMPLATES))}")
    return ChatTemplate(name=name, system_prompt=system_prompt, **_TEMPLATES[name])
