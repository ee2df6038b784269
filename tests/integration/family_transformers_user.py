"""Reads a VLM folder that switchkd trained (Qwen2.5-VL or LLaVA-OneVision) the way a user of transformers
would, with transformers only (no switchkd import).

    python family_transformers_user.py FOLDER IMAGE QUESTION OUT.json

The family's chat template renders the image as one image token, which the family's processor would
expand to the image's token count; ``AutoProcessor`` needs torchvision for the families' video
processors, so the tokenizer and image processor are used directly and the count is the length of the
model's own image features (``get_image_features``).
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
    pixels = dict(images(images=[Image.open(image).convert("RGB")], return_tensors="pt"))
    if model.config.model_type == "llava_onevision":
        pixels["pixel_values"] = pixels["pixel_values"][0]  # one image's crops
    with torch.no_grad():
        count = sum(len(f) for f in model.model.get_image_features(**pixels).pooler_output)
    token = tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    text = text.replace(token, token * count)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    inputs = {"input_ids": ids, **pixels}
    if model.config.model_type == "qwen2_5_vl":
        inputs["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
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
