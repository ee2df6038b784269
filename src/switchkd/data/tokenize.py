"""Token ids and labels for one conversation, built per message from token ids.

Each template segment is tokenised on its own; ``<image>`` becomes ``num_image_tokens`` copies of
the image token id; labels copy the ids of supervised segments (assistant replies with their
end-of-turn token) and are -100 elsewhere. Nothing is re-split from a rendered string.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchkd.data.records import IMAGE_PLACEHOLDER
from switchkd.data.templates import ChatTemplate
from switchkd.losses.sequence import IGNORE_INDEX


class SampleTooLong(ValueError):
    """The sample cannot be cut to ``max_length`` without cutting through its image tokens."""


class NoSupervisedTokens(ValueError):
    """After truncation (or by construction) the sample has nothing to learn from."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def tokenize_conversation(
    messages: list[dict],
    tokenizer,
    template: ChatTemplate,
    *,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int | None = None,
    add_generation_prompt: bool = False,
) -> Tokenized:
    """Ids and labels for ``messages``; the prompt form (no labels needed) with ``add_generation_prompt``."""
    ids: list[int] = []
    labels: list[int] = []
    image_spans: list[tuple[int, int]] = []
    for text, supervised in template.segments(messages, add_generation_prompt):
        pieces = text.split(IMAGE_PLACEHOLDER)
        seg: list[int] = []
        for i, piece in enumerate(pieces):
            if i:
                image_spans.append((len(ids) + len(seg), len(ids) + len(seg) + num_image_tokens))
                seg.extend([image_token_id] * num_image_tokens)
            seg.extend(_encode(tokenizer, piece))
        ids.extend(seg)
        labels.extend(seg if supervised else [IGNORE_INDEX] * len(seg))
    if max_length is not None and len(ids) > max_length:
        if any(end > max_length for _, end in image_spans):
            raise SampleTooLong(f"{len(ids)} tokens, and the image tokens end past max_length={max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    out = Tokenized(ids, labels)
    if not add_generation_prompt and out.num_supervised == 0:
        raise NoSupervisedTokens(f"no supervised token left (length {len(ids)}, max_length={max_length})")
    return out


def prompt_ids(
    messages: list[dict], tokenizer, template: ChatTemplate, *, image_token_id: int, num_image_tokens: int
) -> list[int]:
    """The ids of a prompt ending with the assistant header, for generation."""
    return tokenize_conversation(
        messages,
        tokenizer,
        template,
        image_token_id=image_token_id,
        num_image_tokens=num_image_tokens,
        add_generation_prompt=True,
    ).input_ids
