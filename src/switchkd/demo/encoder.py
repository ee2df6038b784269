"""The shared vision encoder's pre-training: what CLIP or SigLIP pre-training is to the paper's models.

The paper's teacher and student start from one pretrained vision encoder. Trained only through a small
LLM's loss on captions and questions, the world's encoder learned colour and size but hardly shape: a
linear read-out of shape from each occupied cell's feature was right 40 % of the time (chance 25 %;
colour 100 %, size 91 %), so the teacher could not answer any question that finds an object by its
shape. Here the tower learns every cell's shape, colour and size directly (one linear head per
attribute on each of its grid tokens, the empty cell a class of its own) and which cell each token is,
a few hundred steps; the teacher and the student then start from it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from switchkd.data.images import load_image, preprocess_images
from switchkd.demo.world import ATTRIBUTES

log = logging.getLogger("switchkd.demo")


def cell_targets(scenes: list[dict]) -> torch.Tensor:
    """(images, 9, attributes) class indices: 0 for an empty cell, 1 + the value's index otherwise."""
    return torch.tensor(
        [
            [[0 if c is None else 1 + values.index(c[a]) for a, values in ATTRIBUTES.items()] for c in s["cells"]]
            for s in scenes
        ]
    )


def pretrain_encoder(model, scenes_file: Path, *, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Train ``model``'s vision tower in place on the cells of the scenes in ``scenes_file`` (the world's
    training images); returns the last batch's loss. The tower's grid must be the world's 3 x 3."""
    scenes = json.loads(scenes_file.read_text())
    tower = model.vision_tower
    if tower.num_tokens != 9:
        raise ValueError(f"the encoder's grid has {tower.num_tokens} tokens; pre-training reads one per cell (9)")
    root = scenes_file.parent
    pixels = preprocess_images([load_image(root / s["image"]) for s in scenes], model.image_processor)
    targets = cell_targets(scenes)
    cells = torch.arange(targets.shape[1])  # which cell a token is: the grid position, a fourth target
    sizes = [1 + len(values) for values in ATTRIBUTES.values()] + [len(cells)]
    generator = torch.Generator().manual_seed(seed)
    heads = torch.nn.Linear(tower.hidden_size, sum(sizes))
    torch.nn.init.normal_(heads.weight, std=0.02, generator=generator)
    torch.nn.init.zeros_(heads.bias)
    trainable = [p for p in tower.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    tower.train()
    loss = torch.zeros(())
    for _ in range(steps):
        rows = torch.randint(0, len(scenes), (batch_size,), generator=generator)
        logits = heads(tower(pixels[rows])).split(sizes, dim=-1)  # per attribute: (B, 9, classes)
        wanted = torch.cat([targets[rows], cells.expand(len(rows), -1)[..., None]], dim=-1)
        loss = sum(F.cross_entropy(lg.flatten(0, 1), wanted[..., i].flatten()) for i, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tower.eval()
    last = float(loss.detach())
    log.info("encoder pre-trained on %d scenes' cells for %d steps (loss %.4f)", len(scenes), steps, last)
    return last
