"""Where the answer looks: the answer tokens' attention over the image tokens, drawn on the picture
(the paper's Fig. 3), teacher and student side by side.

    switchkd attention --model runs/student/final --teacher runs/teacher/final --image x.png \\
        --question "What colour is the circle?" --out map.png
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from switchkd.data.images import expand_to_square, mean_colour
from switchkd.inference.chat import ChatSession
from switchkd.inference.predict import build_prompt
from switchkd.models.generation import GenerationConfig


@torch.no_grad()
def answer_attention(model, image: Image.Image, question: str, max_new_tokens: int = 16) -> tuple[str, np.ndarray]:
    """The greedy answer and its attention over the image tokens, (grid, grid), summing to 1.

    Averaged over layers, heads and answer tokens; computed with eager attention (the only kernel
    that returns weights), which is switched on for this call and restored afterwards.
    """
    if model.family != "llava":
        raise ValueError(f"attention maps are drawn for the LLaVA-style family's square grid, not {model.family}")
    session = ChatSession(model, image, GenerationConfig(max_new_tokens=max_new_tokens))
    answer = session.ask(question)
    ids = build_prompt(model, session.messages[:1])
    answer_ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"] or [model.tokenizer.eos_token_id]
    full = torch.tensor([ids + answer_ids], device=model.device)
    previous = model.llm.config._attn_implementation
    model.llm.set_attn_implementation("eager")
    try:
        embeds = model.embed_inputs(full, model.encode_images(**session.pixels))  # one unpadded sequence
        attentions = model.llm.get_decoder()(inputs_embeds=embeds, output_attentions=True).attentions
    finally:
        model.llm.set_attn_implementation(previous)
    image_pos = (full[0] == model.image_token_id).nonzero().flatten()
    rows = torch.arange(len(ids) - 1, full.shape[1] - 1, device=full.device)  # positions that predict the answer
    weights = torch.stack([a[0][:, rows][:, :, image_pos].float().mean(dim=(0, 1)) for a in attentions]).mean(0)
    weights = weights / weights.sum().clamp_min(1e-12)
    n = weights.numel()
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} image tokens do not form a square grid; cannot draw a map")
    return answer, weights.reshape(side, side).cpu().numpy()


def _heat(values: np.ndarray) -> np.ndarray:
    """A blue-to-red colour map, (H, W) in [0, 1] -> (H, W, 3) uint8."""
    v = np.clip(values, 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: Image.Image, grid: np.ndarray, processor, size: int = 256) -> Image.Image:
    """The attention grid upsampled onto the (square-padded) image as a translucent heat map."""
    square = expand_to_square(image.convert("RGB"), mean_colour(processor)).resize((size, size))
    scaled = grid / max(float(grid.max()), 1e-12)
    heat = Image.fromarray(_heat(scaled)).resize((size, size), Image.BILINEAR)
    return Image.blend(square, heat, 0.45)


def draw_maps(panels: list[tuple[str, Image.Image]], out: str | Path) -> Path:
    """Panels side by side with their captions underneath."""
    size = panels[0][1].size[0]
    canvas = Image.new("RGB", (size * len(panels), size + 34), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (caption, img) in enumerate(panels):
        canvas.paste(img, (i * size, 0))
        draw.text((i * size + 4, size + 4), caption[:48], fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def attention_figure(models: dict[str, object], image: Image.Image, question: str, out: str | Path) -> Path:
    panels = []
    for name, model in models.items():
        answer, grid = answer_attention(model, image, question)
        panels.append((f"{name}: {answer}", overlay(image, grid, model.image_processor)))
    return draw_maps(panels, out)
