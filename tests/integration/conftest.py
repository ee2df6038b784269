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
    vision = vision_config("clip", width=32, image_size=32, patch_size=8)
    student = build_vlm(ModelConfig(vision=vision, llm=qwen2_config(400, width=48, layers=2), tokenizer=str(tok)))
    teacher = build_vlm(ModelConfig(vision=vision, llm=qwen2_config(400, width=64, layers=2), tokenizer=str(tok)))
    student.save_pretrained(root / "student")
    teacher.save_pretrained(root / "teacher")
    return TinyWorld(root, paths, tok, root / "student", root / "teacher")
