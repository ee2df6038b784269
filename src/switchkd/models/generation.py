"""Batched generation for a ``VisionLanguageModel``: greedy or sampled, with a KV cache.

new_tokens = model.generate(input_ids, attention_mask, pixel_values=pixels, max_new_tokens=32)
# or, with a config object and a streamer:
from switchkd.models.generation import GenerationConfig, generate
new_tokens = generate(model, input_ids, attention_mask, pixel_values=pixels, cfg=GenerationConfig())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    """Upper bound on generated tokens per sequence."""
    do_sample: bool = False
    """Sample from the distribution; false is greedy decoding."""
    temperature: float = 1.0
    """Softmax temperature when sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty (>1 discourages tokens already in the sequence), as in transformers."""
    stop_token_ids: list[int] | None = None
    """Token ids that end a sequence; null uses the chat template's end-of-turn and the EOS token."""
    use_cache: bool = True
    """Reuse keys and values between steps; false recomputes the whole sequence (a reference)."""
    seed: int | None = None
    """Seed for sampling, for reproducible outputs."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")


def to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int):
    """Move every row's padding to the left, so the last column is each prompt's last token."""
    if bool(attention_mask[:, -1].all()):
        return input_ids, attention_mask
    lengths = attention_mask.sum(-1)
    width = input_ids.shape[1]
    ids = torch.full_like(input_ids, pad_id)
    mask = torch.zeros_like(attention_mask)
    for row, n in enumerate(lengths.tolist()):
        keep = attention_mask[row].bool()
        ids[row, width - n :] = input_ids[row, keep]
        mask[row, width - n :] = 1
    return ids, mask


def default_stop_ids(model) -> list[int]:
    """The model's end-of-turn token(s) and its EOS token."""
    tok = model.tokenizer
    ids = {tok.convert_tokens_to_ids(s) for s in model.template.stop_strings}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return sorted(i for i in ids if i is not None and i != tok.unk_token_id)


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    # seen: (B, L) token ids already in the sequence; same rule as transformers.
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def next_tokens(logits: torch.Tensor, seen: torch.Tensor, cfg: GenerationConfig, generator) -> torch.Tensor:
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        logits = _apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if not cfg.do_sample:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_p < 1.0:
        logits = _top_p_filter(logits, cfg.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class _Decoding:
    """The state of one batch being decoded: tokens so far (prompt included), mask, next positions,
    the last forward's output, which rows have stopped, and the image features (without a cache every
    step runs the whole sequence again, images included)."""

    ids: torch.Tensor
    mask: torch.Tensor
    next_pos: torch.Tensor
    out: object
    finished: torch.Tensor
    image_features: torch.Tensor | None
    shapes: dict  # the images' own shapes (image_grid_thw, image_sizes), where the family has them


def _prefill(model, ids, mask, *, image_features, shapes: dict, cfg: GenerationConfig) -> _Decoding:
    """One forward over the prompts (left-padded), filling the KV cache when there is one. Positions are
    the family's own (M-RoPE's three rows for Qwen2.5-VL); every prompt ends with text, whose next
    position is the last one plus one in every row."""
    cache = DynamicCache(config=model.llm.config) if cfg.use_cache else None
    positions = model.position_ids(ids, mask, **shapes)
    out = model(
        ids,
        mask,
        image_features=image_features,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cfg.use_cache,
        logits_at=1,
    )
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    return _Decoding(ids, mask, positions[..., -1:] + 1, out, finished, image_features, shapes)


def _decode_step(model, state: _Decoding, token: torch.Tensor, cfg: GenerationConfig) -> None:
    """Append ``token`` (B,) and run the forward that gives the next token's logits."""
    state.ids = torch.cat([state.ids, token[:, None]], dim=1)
    state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
    if cfg.use_cache:
        past = state.out.past_key_values
        state.out = model(
            token[:, None], state.mask, position_ids=state.next_pos, past_key_values=past, use_cache=True, logits_at=1
        )
        state.next_pos = state.next_pos + 1
    else:
        state.out = model(state.ids, state.mask, image_features=state.image_features, logits_at=1, **state.shapes)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    pixel_values: torch.Tensor | None = None,
    cfg: GenerationConfig | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    **shapes: torch.Tensor,
) -> torch.Tensor:
    """New tokens (B, n): rows that stopped early are filled with the pad id after their stop token.
    ``pixel_values`` and the images' ``shapes`` (``image_grid_thw``, ``image_sizes``, where the family has
    them) are the images as ``model.image_reader`` read them, batched with ``batch_images``.

    ``streamer`` is called with each step's (B,) tokens as they are chosen.
    """
    cfg = cfg or GenerationConfig()
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ids, mask = to_left_padding(input_ids, attention_mask, pad_id)
    stop = torch.tensor(
        cfg.stop_token_ids if cfg.stop_token_ids is not None else default_stop_ids(model), device=ids.device
    )
    generator = None
    if cfg.do_sample and cfg.seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(cfg.seed)
    vocab = model.vocab_size  # logits rows past the tokenizer are padding and never chosen
    image_features = model.encode_images(pixel_values, **shapes) if pixel_values is not None else None
    state = _prefill(model, ids, mask, image_features=image_features, shapes=shapes, cfg=cfg)
    new: list[torch.Tensor] = []
    for _ in range(cfg.max_new_tokens):
        token = next_tokens(state.out.logits[:, -1, :vocab], state.ids, cfg, generator)
        token = token.masked_fill(state.finished, pad_id)
        new.append(token)
        if streamer is not None:
            streamer(token)
        state.finished |= torch.isin(token, stop)
        if bool(state.finished.all()) or len(new) == cfg.max_new_tokens:
            break
        _decode_step(model, state, token, cfg)
    return torch.stack(new, dim=1)
