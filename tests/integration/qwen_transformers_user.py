"""Reads a Qwen2.5-VL folder that switchkd trained the way a user of transformers would, with transformers
only (no switchkd import).

    python qwen_transformers_user.py FOLDER IMAGE QUESTION OUT.json

The family's chat template renders the image as one ``<|image_pad|>``, which the Qwen processor expands
to the image's token count (its grid's t·h·w / merge²); ``AutoProcessor`` needs torchvision for the
video half, so the tokenizer and image processor are used directly and the expansion is done here.
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer


def main(folder: str, image: str, question: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    images = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pixels = images(images=[Image.open(image).convert("RGB")], return_tensors="pt")
    count = int(pixels["image_grid_thw"][0].prod()) // images.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * count)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    inputs = {"input_ids": ids, "mm_token_type_ids": (ids == model.config.image_token_id).int(), **pixels}
    with torch.no_grad():
        logits = model(**inputs).logits
        new = model.generate(**inputs, max_new_tokens=20, do_sample=False)[0, ids.shape[1] :]
    result = {
        "model": type(model).__name__,
        "ids": ids[0].tolist(),
        "logits": logits[0].flatten().tolist(),
        "generated": new.tolist(),
        "reply": tokenizer.decode(new, skip_special_tokens=True),
        "switchkd_imported": any(m.split(".")[0] == "switchkd" for m in sys.modules),
    }
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
