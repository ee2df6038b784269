"""The pathway interface: what the distiller, the trainer and inference need of a VLM, whatever its family.

Switch-KD composes one model's vision features with another model's projector and LLM, so every family
exposes the same three stages and the data around them:

=====================  ==========================================================================
``encode_vision``      V(x): the vision features before the projector (the switch point)
``project``            P: vision features -> LLM input embeddings (``encode_images`` = P(V(x))); its
                       parameters are the ``projector`` part
``__call__``           L: the LLM over the prompt with image embeddings in place
                       (``image_features=``), on the family's own position ids (``position_ids``)
``lm_head``            the output head the loss head multiplies hidden states with
``image_reader``       how a picture becomes tensors and how many image tokens it takes
``image_token_id``,    the prompt's image tokens, and the ids around them
``image_wrap``
``template``,          the chat template; the tokenizer (one vocabulary for a pair)
``tokenizer``
``parts()``            {"vision", "projector", "llm"}: what stages freeze and LoRA adapts
``save_pretrained``    the family's own folder
=====================  ==========================================================================

Families: ``llava`` (``VisionLanguageModel``: the paper's CLIP/SigLIP -> projector -> Qwen2.5
composition, and LLaVA-1.5 folders through ``switchkd import``), ``qwen2_5_vl`` (``QwenVLModel``:
transformers' Qwen2.5-VL) and ``llava_onevision`` (``OneVisionModel``: transformers' LLaVA-OneVision).
``load_vlm`` reads the family from a folder's ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from switchkd.config import ConfigError

WHOLE_FOLDER_FAMILIES = ("qwen2_5_vl", "llava_onevision")
"""Families whose folders are transformers' own (``model_type``); the other, ``llava``, is switchkd's."""


def family_of(folder: str | Path) -> str:
    """The family of a model folder, from its ``config.json``; one line naming the folder otherwise."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON config ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a JSON object")
    if "model" in meta:
        return "llava"
    kind = meta.get("model_type")
    if kind in WHOLE_FOLDER_FAMILIES:
        return kind
    if kind == "llava":
        raise ValueError(f"{folder} is a LLaVA-HF folder: convert it once with `switchkd import {folder} --out DIR`")
    raise ValueError(
        f"{path}: model_type {kind!r} is not a VLM family switchkd reads "
        f"(a switchkd folder, {', '.join(WHOLE_FOLDER_FAMILIES)})"
    )


def family_class(family: str) -> type:
    """The class of a whole-folder family (``qwen2_5_vl``, ``llava_onevision``)."""
    if family == "qwen2_5_vl":
        from switchkd.models.qwen_vl import QwenVLModel

        return QwenVLModel
    from switchkd.models.onevision import OneVisionModel

    return OneVisionModel


def load_vlm(
    folder: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    image_processor: dict | None = None,
):
    """The model saved in ``folder``, of whichever family it is, in eval mode. ``image_processor``:
    settings over the saved ones (grid-reading families: ``min_pixels``, ``max_pixels``)."""
    family = family_of(folder)
    if family != "llava":
        return family_class(family).from_pretrained(folder, dtype=dtype, device=device, image_processor=image_processor)
    from switchkd.models.vlm import VisionLanguageModel

    if image_processor:
        raise ConfigError(
            f"{folder}: image_processor settings apply to Qwen2.5-VL and LLaVA-OneVision folders; "
            "a switchkd folder keeps its own",
            key="image_processor",
        )
    return VisionLanguageModel.from_pretrained(folder, dtype=dtype, device=device)
