"""Config dicts for small models built from scratch: the built-in demo and the tests use them."""

from __future__ import annotations


def _shape(width: int, layers: int, heads: int) -> dict:
    """The transformer fields both configs share (MLP width twice the hidden width)."""
    return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads)


def vision_config(
    kind: str = "clip", *, width: int = 32, layers: int = 2, heads: int = 4, image_size: int = 56, patch_size: int = 14
) -> dict:
    """A CLIP or SigLIP vision encoder config (``kind``: clip | siglip)."""
    model_type = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}.get(kind)
    if model_type is None:
        raise ValueError(f"unknown vision kind {kind!r}; valid: clip, siglip")
    return dict(model_type=model_type, image_size=image_size, patch_size=patch_size, **_shape(width, layers, heads))


def qwen2_config(
    vocab_size: int,
    *,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 2048,
) -> dict:
    """A Qwen2 causal LM config."""
    return dict(
        model_type="qwen2",
        vocab_size=vocab_size,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
        **_shape(width, layers, heads),
    )
