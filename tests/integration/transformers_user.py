"""Reads an exported LLaVA folder the way a user of transformers would, with transformers only.

    python transformers_user.py FOLDER IMAGE QUESTION OUT.json

Run by tests/integration/test_interop.py in its own process (transformers 5, or 4.x put first on
PYTHONPATH): chat template with structured and plain content, processor, logits, ``generate`` with
the folder's generation config, and on transformers 5 the ``image-text-to-text`` pipeline.
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

MAX_NEW_TOKENS = 30


def main(folder: str, image: str, question: str, out: str) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    structured = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        structured, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    plain_ids = {}
    # plain content with the image token, and LLaVA-style "<image>" as lmms-eval's llava_hf writes it
    for name, placeholder in (("plain_ids", processor.image_token), ("llava_ids", "<image>")):
        plain = [{"role": "user", "content": f"{placeholder}\n{question}"}]
        text = processor.tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        ids = processor(text=text, images=[Image.open(image)], return_tensors="pt")["input_ids"]
        plain_ids[name] = ids[0].tolist()
    with torch.no_grad():
        logits = model(**inputs).logits
        new = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[
            0, inputs["input_ids"].shape[1] :
        ]
    result = {
        "transformers": transformers.__version__,
        "ids": inputs["input_ids"][0].tolist(),
        **plain_ids,
        "pixels": inputs["pixel_values"].flatten().tolist(),
        "logits": logits[0].flatten().tolist(),
        "generated": new.tolist(),
        "switchkd_imported": any(m.split(".")[0] == "switchkd" for m in sys.modules),
    }
    if int(transformers.__version__.split(".")[0]) >= 5:
        pipe = pipeline("image-text-to-text", model=folder)
        reply = pipe(text=structured, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
        result["pipeline"] = reply[0]["generated_text"]
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
