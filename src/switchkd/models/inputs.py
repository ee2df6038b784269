"""Assembling the LLM's inputs: image features placed at the image tokens, and position ids."""

from __future__ import annotations

import torch


def merge_image_features(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor | None, image_token_id: int
) -> torch.Tensor:
    """Put image features where the image tokens are, in reading order.

    ``inputs_embeds`` (B, T, D) text embeddings; ``image_features`` (N_images, N_img_tokens, D),
    one row per image in the order the images appear in the batch (sample by sample).
    """
    mask = input_ids == image_token_id  # (B, T)
    n_slots = int(mask.sum())
    n_feats = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
    if n_slots != n_feats:
        shape = None if image_features is None else tuple(image_features.shape)
        raise ValueError(
            f"the batch has {n_slots} image placeholder tokens but the image features {shape} "
            f"provide {n_feats}; each image needs exactly as many placeholders as the projector "
            "emits tokens (use the model's tokenizer helpers to expand <image>)"
        )
    if n_slots == 0:
        return inputs_embeds
    feats = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)
    # masked_scatter fills True positions row-major, i.e. sample by sample, left to right.
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds), feats)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only attended tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
