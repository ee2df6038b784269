"""The components of a VLM from a ``ModelConfig``: component folders (real use) or config dicts (tiny
models). ``VisionLanguageModel.from_config`` puts them together."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.initialization import no_init_weights

from switchkd.config import ConfigError, ModelConfig, require_folder
from switchkd.data.images import default_image_processor, load_image_processor
from switchkd.models.projectors import build_projector
from switchkd.models.vision import VisionTower, load_vision_encoder


def load_llm(source: str | dict, attn_implementation: str = "sdpa", dtype=None):
    if isinstance(source, dict):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ConfigError("a config dict needs a `model_type`, e.g. qwen2", key="llm")
        config = AutoConfig.for_model(model_type, **fields)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(
        str(require_folder(source, "llm")), attn_implementation=attn_implementation, dtype=dtype
    )


def tokenizer_source(cfg: ModelConfig) -> str | None:
    """The tokenizer folder: as given, else the LLM folder's."""
    return cfg.tokenizer or (cfg.llm if isinstance(cfg.llm, str) else None)


def processor_source(cfg: ModelConfig) -> str | dict | None:
    """The image processor: as given, else the vision folder's when it has one (None: build a default)."""
    if (
        cfg.image_processor is None
        and isinstance(cfg.vision, str)
        and (Path(cfg.vision) / "preprocessor_config.json").is_file()
    ):
        return cfg.vision
    return cfg.image_processor


def load_tokenizer(cfg: ModelConfig):
    source = tokenizer_source(cfg)
    if source is None:
        raise ConfigError("a tokenizer folder is needed when the LLM is built from a config dict", key="tokenizer")
    folder = require_folder(source, "tokenizer")
    # AutoTokenizer reads the folder's config.json; one transformers does not know (a switchkd folder, a
    # remote-code checkpoint) only earns a warning there, so it gets an empty config instead.
    extra = {"config": PretrainedConfig()} if _foreign_config(folder) else {}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _foreign_config(folder: Path) -> bool:
    path = folder / "config.json"
    if not path.is_file():
        return False
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return True
    return kind not in CONFIG_MAPPING


def load_processor(cfg: ModelConfig, encoder):
    source = processor_source(cfg)
    if isinstance(source, str):
        return load_image_processor(require_folder(source, "image_processor"))
    return default_image_processor(encoder.config.model_type, encoder.config.image_size, **(source or {}))


@dataclass
class Components:
    vision_tower: VisionTower
    projector: object
    llm: object
    tokenizer: object
    image_processor: object


def build_components(cfg: ModelConfig, *, fresh_weights: bool = True, dtype=None) -> Components:
    """Vision tower, projector, LLM, tokenizer and image processor. ``fresh_weights=False`` skips random
    initialisation for weights about to be loaded."""
    guard = contextlib.nullcontext() if fresh_weights else no_init_weights()
    with guard:
        encoder = load_vision_encoder(cfg.vision, cfg.attn_implementation, dtype)
        llm = load_llm(cfg.llm, cfg.attn_implementation, dtype)
        tower = VisionTower(encoder, cfg.vision_feature_layer, cfg.drop_cls)
        projector = build_projector(
            cfg.projector, tower.hidden_size, llm.get_input_embeddings().embedding_dim, **cfg.projector_kwargs
        )
    llm.tie_weights()  # no_init_weights also skips tying (Qwen ties lm_head to the embeddings)
    if dtype is not None:
        projector.to(dtype)
    return Components(tower, projector, llm, load_tokenizer(cfg), load_processor(cfg, encoder))
