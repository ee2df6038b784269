"""A tiny built-in world with a trained tokenizer and saved student/teacher folders (session-wide)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from switchkd.config import ModelConfig
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.tokenizer import train_tokenizer
from switchkd.demo.world import WorldConfig, corpus, write_world
from switchkd.models import build_vlm


@dataclass
class TinyWorld:
    root: Path
    paths: dict
    tokenizer: Path
    student: Path
    teacher: Path


def world_model(tokenizer: Path, *, llm_width: int = 64, vision_width: int = 32, **model_kwargs):
    """A fresh VLM for the tiny world: a CLIP tower on its 32-pixel images and a Qwen2 LLM."""
    vision = vision_config("clip", width=vision_width, image_size=32, patch_size=8)
    llm = qwen2_config(400, width=llm_width, layers=2)
    return build_vlm(ModelConfig(vision=vision, llm=llm, tokenizer=str(tokenizer), **model_kwargs))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> TinyWorld:
    import torch

    root = tmp_path_factory.mktemp("world")
    paths = write_world(
        WorldConfig(seed=0, train_images=48, val_images=8, test_images=14, image_size=32), root / "world"
    )
    tok = root / "tok"
    train_tokenizer(corpus(paths), vocab_size=400, out_dir=tok)
    torch.manual_seed(0)
    student = world_model(tok, llm_width=48)
    teacher = world_model(tok, llm_width=64)
    student.save_pretrained(root / "student")
    teacher.save_pretrained(root / "teacher")
    return TinyWorld(root, paths, tok, root / "student", root / "teacher")
