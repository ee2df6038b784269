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


def _text_fields(vocab_size, width, layers, heads, kv_heads, intermediate, tie_word_embeddings) -> dict:
    """A whole VLM's text config: the Qwen2 fields of ``qwen2_config`` (without its model type, which the
    VLM's config sets), an MLP width of its own, room for long image prompts."""
    fields = qwen2_config(
        vocab_size,
        width=width,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=32_768,
    )
    del fields["model_type"]
    return fields | {"intermediate_size": intermediate or 2 * width}


def _save_folder(out, model, tokenizer, processor, dtype):
    """``model`` (in ``dtype`` when given), its tokenizer and image processor saved as one Hub-style folder."""
    from pathlib import Path

    out = Path(out)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def qwen2_5_vl_folder(
    out,
    tokenizer_dir,
    *,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vision_width: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    vision_intermediate: int | None = None,
    vocab_size: int = 151_936,
    tie_word_embeddings: bool = True,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    init_std: float = 0.02,
    dtype=None,
):
    """A fresh Qwen2.5-VL model saved as the Hub's folders are (config, weights, the Qwen tokenizer in
    ``tokenizer_dir``, a Qwen2-VL image processor), to be loaded back through ``from_pretrained``.
    Real widths (3B: 2048 / 1280, 7B: 3584 / 1280) with few layers give paper-shaped runs. ``init_std``:
    the weights' initial spread (transformers' 0.02 leaves a tiny model's attention so flat that its
    keys get almost no gradient, which Adam turns into steps of rounding noise)."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = dict(
        zip(
            ("start", "image", "end", "video"),
            tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]),
        )
    )
    # M-RoPE splits each head's rotary half into (temporal, height, width) sections, as the family's 3:3:2
    half = width // heads // 2
    section = [half // 4, half // 4, half - 2 * (half // 4)]
    config = Qwen2_5_VLConfig(
        text_config=_text_fields(vocab_size, width, layers, heads, kv_heads, intermediate, tie_word_embeddings)
        | {"rope_scaling": {"type": "mrope", "mrope_section": section}, "initializer_range": init_std},
        vision_config=dict(
            depth=vision_layers,
            hidden_size=vision_width,
            intermediate_size=vision_intermediate or 2 * vision_width,
            num_heads=vision_heads,
            out_hidden_size=width,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_layers - 1],
            initializer_range=init_std,
        ),
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"],
        tie_word_embeddings=tie_word_embeddings,
    )
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    return _save_folder(out, Qwen2_5_VLForConditionalGeneration(config), tok, processor, dtype)


def onevision_folder(
    out,
    tokenizer_dir,
    *,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vision_width: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    crop_size: int = 56,
    patch_size: int = 14,
    vocab_size: int = 151_936,
    tie_word_embeddings: bool = True,
    dtype=None,
):
    """A fresh LLaVA-OneVision model saved as the Hub's folders are: a SigLIP tower reading
    ``crop_size`` px crops, a Qwen2 LLM, the Qwen tokenizer in ``tokenizer_dir`` with the family's
    ``<image>`` token added, and an anyres image processor whose grid is 1-3 crops a side."""
    from transformers import AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.add_tokens(["<image>"], special_tokens=True)
    pinpoints = [[crop_size * h, crop_size * w] for h in (1, 2, 3) for w in (1, 2, 3)]
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=vision_width,
            intermediate_size=2 * vision_width,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=crop_size,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        text_config={"model_type": "qwen2"}
        | _text_fields(vocab_size, width, layers, heads, kv_heads, intermediate, tie_word_embeddings),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<|video_pad|>"),
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=tie_word_embeddings,
    )
    processor = LlavaOnevisionImageProcessorPil(
        size={"height": crop_size, "width": crop_size},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return _save_folder(out, LlavaOnevisionForConditionalGeneration(config), tok, processor, dtype)
