"""Vision tower, projectors and the vision-language model."""

from switchkd.models.builders import build_vlm, load_llm, load_tokenizer
from switchkd.models.projectors import PROJECTORS, build_projector
from switchkd.models.vision import VisionTower, load_vision_encoder
from switchkd.models.vlm import VisionLanguageModel, VLMOutput, merge_image_features, position_ids_from_mask

__all__ = [
    "PROJECTORS",
    "VLMOutput",
    "VisionLanguageModel",
    "VisionTower",
    "build_projector",
    "build_vlm",
    "load_llm",
    "load_tokenizer",
    "load_vision_encoder",
    "merge_image_features",
    "position_ids_from_mask",
]
