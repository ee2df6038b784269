"""The shared encoder's pre-training on the world's cells (``demo/encoder.py``)."""

import json

import pytest
import torch

from switchkd.config import ModelConfig
from switchkd.demo.encoder import cell_targets, pretrain_encoder
from switchkd.demo.presets import qwen2_config, vision_config
from switchkd.demo.world import ATTRIBUTES, POSITIONS, WorldConfig, write_world
from switchkd.models import build_vlm


def _model(tokenizer_dir, patch_size=16):
    vision = vision_config("clip", width=32, layers=2, image_size=48, patch_size=patch_size)
    return build_vlm(ModelConfig(vision=vision, llm=qwen2_config(320, width=32), tokenizer=str(tokenizer_dir)))


def test_targets_say_what_every_cell_holds(tmp_path):
    paths = write_world(WorldConfig(train_images=30, val_images=2, test_images=2, image_size=48), tmp_path)
    scenes = json.loads(paths["scenes"].read_text())
    pt = json.loads(paths["pt"].read_text())
    assert [s["image"] for s in scenes] == [r["image"] for r in pt]
    targets = cell_targets(scenes)
    assert targets.shape == (30, 9, 3)
    for scene, row, record in zip(scenes, targets, pt):
        caption = record["conversations"][1]["value"].lower()
        for cell, (content, target) in enumerate(zip(scene["cells"], row.tolist())):
            if content is None:
                assert target == [0, 0, 0]
                continue
            assert target == [1 + list(values).index(content[a]) for a, values in ATTRIBUTES.items()]
            # the caption names the same object at the same place
            assert f"{content['size']} {content['colour']} {content['shape']} at the {POSITIONS[cell]}" in caption


def test_pretraining_teaches_the_tower_the_cells_and_needs_a_3x3_grid(tmp_path, tiny_tokenizer_dir):
    paths = write_world(WorldConfig(train_images=64, val_images=2, test_images=2, image_size=48), tmp_path)
    losses = []
    for steps in (1, 120):
        torch.manual_seed(0)
        model = _model(tiny_tokenizer_dir)
        before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
        losses.append(pretrain_encoder(model, paths["scenes"], steps=steps, batch_size=16, lr=2e-3, seed=0))
    assert losses[1] < 0.25 * losses[0], losses
    moved = [k for k, v in model.vision_tower.state_dict().items() if not torch.equal(v, before[k])]
    assert any("layers.0" in k for k in moved) and any("patch_embedding" in k for k in moved)  # the tower learns
    with pytest.raises(ValueError, match="grid has 36 tokens; pre-training reads one per cell"):
        pretrain_encoder(
            _model(tiny_tokenizer_dir, patch_size=8), paths["scenes"], steps=1, batch_size=4, lr=1e-3, seed=0
        )
