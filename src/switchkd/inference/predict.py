"""Answer questions about images with a VLM, in batches (evaluation and ``switchkd predict``).

from switchkd.inference.predict import Question, answer_questions
answers = answer_questions(model, [Question("q1", "What colour is it?", "img.png")])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from PIL import Image

from switchkd.data.images import load_image, preprocess_images
from switchkd.data.records import IMAGE_PLACEHOLDER
from switchkd.data.tokenize import prompt_ids
from switchkd.models.generation import GenerationConfig, default_stop_ids, generate


@dataclass
class Question:
    id: str
    text: str
    image: str | Image.Image | None = None
    """A path, an already loaded image, or None for a text-only question."""


def build_prompt(model, messages: list[dict]) -> list[int]:
    return prompt_ids(
        messages,
        model.tokenizer,
        model.template,
        image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens,
    )


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def answer_questions(
    model, questions: list[Question], *, batch_size: int = 8, max_new_tokens: int = 32, progress: bool = False
) -> dict[str, str]:
    """Greedy answers keyed by question id; prompts use the model's own chat template."""
    model.eval()
    stops = set(default_stop_ids(model))
    device = model.device
    pad = model.tokenizer.pad_token_id
    out: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(questions), desc="answering", dynamic_ncols=True)
    for batch in _batches(questions, batch_size):
        ids, images = [], []
        for q in batch:
            text = q.text.replace(IMAGE_PLACEHOLDER, "").strip()
            if q.image is not None:
                img = q.image if isinstance(q.image, Image.Image) else load_image(q.image)
                images.append(img.convert("RGB"))
                text = f"{IMAGE_PLACEHOLDER}\n{text}"
            ids.append(build_prompt(model, [{"role": "user", "content": text}]))
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(ids):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        pixels = preprocess_images(images, model.image_processor).to(device, model.dtype) if images else None
        new = generate(
            model,
            input_ids.to(device),
            mask.to(device),
            pixel_values=pixels,
            cfg=GenerationConfig(max_new_tokens=max_new_tokens),
        )
        for q, tokens in zip(batch, new.tolist()):
            out[q.id] = decode_answer(model, tokens, stops)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


def decode_answer(model, tokens: list[int], stops: set[int]) -> str:
    """Text of generated tokens up to (not including) the first stop token."""
    kept = []
    for t in tokens:
        if t in stops:
            break
        kept.append(t)
    return model.tokenizer.decode(kept, skip_special_tokens=True).strip()
