"""Assemble a VLM from a ``ModelConfig``: component folders (real use), config dicts (tiny models),
or a saved switchkd folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from switchkd.config import ConfigError, ModelConfig, require_folder
from switchkd.data.images import default_image_processor, load_image_processor
from switchkd.data.templates import get_template
from switchkd.models.projectors import build_projector
from switchkd.models.vision import VisionTower, load_vision_encoder
from switchkd.models.vlm import VisionLanguageModel


def load_llm(source: str | dict, attn_implementation: str = "sdpa", dtype=None):
    if isinstance(source, dict):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ConfigError("llm config dict needs a `model_type`, e.g. qwen2")
        config = AutoConfig.for_model(model_type, **fields)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(
        str(require_folder(source, "model.llm")), attn_implementation=attn_implementation, dtype=dtype
    )


def tokenizer_source(cfg: ModelConfig) -> str | None:
    """The tokenizer folder: as given, else the LLM folder's."""
    return cfg.tokenizer or (cfg.llm if isinstance(cfg.llm, str) else None)


def processor_source(cfg: ModelConfig) -> str | dict | None:
    """The image processor: as given, else the vision folder's when it has one (None: build a default)."""
    if cfg.image_processor is None and isinstance(cfg.vision, str) and \
            (Path(cfg.vision) / "preprocessor_config.json").is_file():
        return cfg.vision
    return cfg.image_processor


def load_tokenizer(cfg: ModelConfig):
    source = tokenizer_source(cfg)
    if source is None:
        raise ConfigError("model.tokenizer: a tokenizer folder is needed when the LLM is built from a config dict")
    tokenizer = AutoTokenizer.from_pretrained(str(require_folder(source, "model.tokenizer")))
    # One template everywhere: the saved tokenizer's apply_chat_template renders what we train on.
    tokenizer.chat_template = get_template(cfg.chat_template, cfg.system_prompt).jinja()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_processor(cfg: ModelConfig, encoder):
    source = processor_source(cfg)
    if isinstance(source, str):
        return load_image_processor(require_folder(source, "model.image_processor"))
    return default_image_processor(encoder.config.model_type, encoder.config.image_size, **(source or {}))


def build_vlm(cfg: ModelConfig, fresh_weights: bool = True, dtype=None) -> VisionLanguageModel:
    """Build a VLM. ``fresh_weights=False`` skips random initialisation for weights about to be loaded."""
    if cfg.pretrained is not None:
        return VisionLanguageModel.from_pretrained(require_folder(cfg.pretrained, "model.pretrained"), dtype=dtype)
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
    return VisionLanguageModel(cfg, tower, projector, llm, load_tokenizer(cfg), load_processor(cfg, encoder))


