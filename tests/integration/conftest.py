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


@dataclass
class QwenWorld:
    """Tiny Qwen2.5-VL student and teacher folders (the real Qwen tokenizer) and LLaVA-format records
    whose images have different sizes, so each takes its own number of image tokens."""

    root: Path
    paths: dict
    student: Path
    teacher: Path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZES = [(56, 56), (84, 56), (56, 112), (112, 84)]  # (width, height): 4, 6, 8 and 12 image tokens


def write_qwen_records(root: Path, n: int = 16) -> Path:
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        w, h = SIZES[i % len(SIZES)]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        records.append(
            {
                "id": f"q{i}",
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the picture?"},
                    {"from": "gpt", "value": f"It is {name}."},
                ],
            }
        )
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="session")
def qwen_world(tmp_path_factory, qwen_tokenizer_dir) -> QwenWorld:
    import torch

    from switchkd.demo.presets import qwen2_5_vl_folder

    root = tmp_path_factory.mktemp("qwen")
    (root / "data").mkdir()
    records = write_qwen_records(root / "data")
    torch.manual_seed(0)
    student = qwen2_5_vl_folder(root / "student", qwen_tokenizer_dir, width=32, init_std=0.1)
    teacher = qwen2_5_vl_folder(root / "teacher", qwen_tokenizer_dir, width=48, layers=3, heads=4, init_std=0.1)
    return QwenWorld(root, {"dft": records, "pt": records}, student, teacher)


@pytest.fixture(scope="session")
def onevision_world(tmp_path_factory, qwen_tokenizer_dir) -> QwenWorld:
    """Tiny LLaVA-OneVision student and teacher (SigLIP on 56 px crops, 1-3 crops a side), the same
    records of pictures of several sizes."""
    import torch

    from switchkd.demo.presets import onevision_folder

    root = tmp_path_factory.mktemp("onevision")
    (root / "data").mkdir()
    records = write_qwen_records(root / "data")
    torch.manual_seed(0)
    student = onevision_folder(root / "student", qwen_tokenizer_dir, width=32)
    teacher = onevision_folder(root / "teacher", qwen_tokenizer_dir, width=48, layers=3)
    return QwenWorld(root, {"dft": records, "pt": records}, student, teacher)
