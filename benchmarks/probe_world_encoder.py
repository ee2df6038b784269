"""A linear read-out of what a demo model's vision features hold, per attribute and grid cell.

    python benchmarks/probe_world_encoder.py runs/demo/teacher/final runs/demo/world

For each of the world's training images (``scenes.json``: what every cell of the 3 x 3 grid holds) the
model's vision features V (the tower's grid tokens) and the projector's output P(V) are read; for every
cell and attribute (shape, colour, size) a multinomial logistic regression on that cell's own token is
fitted on the first 80 % of the images and scored on the rest, counting only the cells that hold an
object (chance: 1 / 4 for shape and colour, 1 / 2 for size). This is how the demo's teacher was found
to encode colour and size but hardly shape when its encoder learned only through the LLM's loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from switchkd.data.images import load_image, preprocess_images
from switchkd.demo.encoder import cell_targets
from switchkd.demo.world import ATTRIBUTES
from switchkd.models import VisionLanguageModel


def read_out(x: torch.Tensor, y: torch.Tensor, classes: int, cut: int) -> float:
    """Held-out accuracy on occupied cells (y > 0) of an L2-regularised logistic regression."""
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:cut] @ w + b, y[:cut]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    occupied = y[cut:] > 0
    with torch.no_grad():
        return float(((x[cut:] @ w + b).argmax(1)[occupied] == y[cut:][occupied]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a demo model folder (e.g. runs/demo/teacher/final)")
    parser.add_argument("world", help="the demo's world folder (with scenes.json)")
    args = parser.parse_args()
    model = VisionLanguageModel.from_pretrained(args.model)
    scenes = json.loads((Path(args.world) / "scenes.json").read_text())
    pixels = preprocess_images([load_image(Path(args.world) / s["image"]) for s in scenes], model.image_processor)
    targets = cell_targets(scenes)  # (images, 9, attributes)
    with torch.no_grad():
        v = model.vision_tower(pixels)
        p = model.projector(v)
    cut = int(0.8 * len(scenes))
    print(
        f"{len(scenes)} images, {len(scenes) - cut} held out; accuracy on occupied cells, mean [min] over the 9 cells"
    )
    print("| features | " + " | ".join(ATTRIBUTES) + " |")
    print("| --- |" + " ---: |" * len(ATTRIBUTES))
    for name, feats in (("V (vision tower)", v), ("P(V) (projector)", p)):
        cells = []
        for i, values in enumerate(ATTRIBUTES.values()):
            accs = [read_out(feats[:, c].float(), targets[:, c, i], 1 + len(values), cut) for c in range(9)]
            cells.append(f"{sum(accs) / 9:.2f} [{min(accs):.2f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
