"""Token ids and labels for one conversation, built per message from token ids.

Each template segment is tokenised on its own, message text with control tokens split (so text
can never end a turn or stand for an image); ``<image>`` in message text becomes ``num_image_tokens``
copies of the image token id (between the family's ``image_wrap`` ids: Qwen2-VL's
``<|vision_start|>`` and ``<|vision_end|>``); labels copy the ids of supervised segments (assistant replies with their
end-of-turn token) and are -100 elsewhere. Nothing is re-split from a rendered string.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchkd.data.records import IMAGE_PLACEHOLDER, RecordError
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


def control_tokens_in(text: str, tokenizer) -> list[str]:
    """The tokenizer's special tokens that occur in ``text``."""
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(t for t in special if t in text)


def _encode_all(tokenizer, texts: list[str], *, literal: bool) -> list[list[int]]:
    """The ids of each text, all in one tokenizer call (a call costs about 50 us of Python around the Rust
    work, and a three-turn record has about twenty pieces). ``literal`` text (what a record or a user
    wrote) never yields a control token: ``<|im_end|>`` typed in an answer is the characters, not the end
    of the turn."""
    if not texts:
        return []
    found = tokenizer(texts, add_special_tokens=False, split_special_tokens=literal)["input_ids"]
    return [ids if text else [] for text, ids in zip(texts, found, strict=True)]


def _content_pieces(text: str, tokenizer, *, control_tokens: str) -> list[str]:
    """One message's text around its ``<image>`` placeholders; refused here if it holds control tokens
    and ``control_tokens`` is "reject"."""
    if control_tokens == "reject" and (found := control_tokens_in(text, tokenizer)):
        raise RecordError(f"the text contains control token(s) {', '.join(found)} (data.control_tokens=reject)")
    return text.split(IMAGE_PLACEHOLDER)


def tokenize_conversation(
    messages: list[dict],
    tokenizer,
    template: ChatTemplate,
    *,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int | None = None,
    add_generation_prompt: bool = False,
    control_tokens: str = "split",
    image_wrap: tuple[list[int], list[int]] = ([], []),
) -> Tokenized:
    """Ids and labels for ``messages``; the prompt form (no labels needed) with ``add_generation_prompt``.
    ``control_tokens``: control tokens in message text are tokenized as text ("split") or refused
    with a RecordError ("reject"). ``image_wrap``: ids before and after each image's tokens."""
    image = [*image_wrap[0], *[image_token_id] * num_image_tokens, *image_wrap[1]]
    # Each segment's text: a message's pieces between images are literal (``<image>`` becomes the ids
    # ``image``, so the image token id comes from ``<image>`` and nowhere else); the template's own text
    # is not. Both kinds are encoded in one tokenizer call each.
    segments = list(template.segments(messages, add_generation_prompt))
    pieces = [
        _content_pieces(text, tokenizer, control_tokens=control_tokens) if content else [text]
        for text, _, content in segments
    ]
    is_content = [content for _, _, content in segments]
    literal = iter(_encode_all(tokenizer, [p for ps, c in zip(pieces, is_content) if c for p in ps], literal=True))
    fixed = iter(_encode_all(tokenizer, [ps[0] for ps, c in zip(pieces, is_content) if not c], literal=False))
    ids: list[int] = []
    labels: list[int] = []
    for (_, supervised, content), parts in zip(segments, pieces):
        seg: list[int] = []
        for i in range(len(parts)):
            if i:
                seg.extend(image)
            seg.extend(next(literal) if content else next(fixed))
        ids.extend(seg)
        labels.extend(seg if supervised else [IGNORE_INDEX] * len(seg))
    if max_length is not None and len(ids) > max_length:
        if not set(image).isdisjoint(ids[max_length:]):  # the cut would go through the image's tokens
            raise SampleTooLong(f"{len(ids)} tokens, and the image tokens end past max_length={max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    out = Tokenized(ids, labels)
    if not add_generation_prompt and out.num_supervised == 0:
        raise NoSupervisedTokens(f"no supervised token left (length {len(ids)}, max_length={max_length})")
    return out


def prompt_ids(
    messages: list[dict],
    tokenizer,
    template: ChatTemplate,
    *,
    image_token_id: int,
    num_image_tokens: int,
    image_wrap: tuple[list[int], list[int]] = ([], []),
) -> list[int]:
    """The ids of a prompt ending with the assistant header, for generation."""
    return tokenize_conversation(
        messages,
        tokenizer,
        template,
        image_token_id=image_token_id,
        num_image_tokens=num_image_tokens,
        add_generation_prompt=True,
        image_wrap=image_wrap,
    ).input_ids
