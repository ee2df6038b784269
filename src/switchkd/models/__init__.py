"""Vision tower, projectors and the vision-language model."""

from switchkd.models.builders import load_llm, load_tokenizer
from switchkd.models.generation import GenerationConfig, generate
from switchkd.models.inputs import merge_image_features, position_ids_from_mask
from switchkd.models.projectors import PROJECTORS, build_projector
from switchkd.models.vision import VisionTower, load_vision_encoder
from switchkd.models.vlm import VisionLanguageModel, VLMOutput, build_vlm

__all__ = [
    "PROJECTORS",
    "GenerationConfig",
    "VLMOutput",
    "VisionLanguageModel",
    "VisionTower",
    "build_projector",
    "build_vlm",
    "generate",
    "load_llm",
    "load_tokenizer",
    "load_vision_encoder",
    "merge_image_features",
    "position_ids_from_mask",
]
