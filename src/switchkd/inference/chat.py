"""A multi-turn chat about one image; the loop (I/O) is separate from generation.

Usage:

    session = ChatSession(model, image=load_image("cat.jpg"))
    print(session.ask("What is in the picture?"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import torch
from PIL import Image

from switchkd.data.images import batch_images, place_images
from switchkd.data.records import IMAGE_PLACEHOLDER
from switchkd.inference.predict import build_prompt
from switchkd.models.generation import GenerationConfig, default_stop_ids, generate

EXIT_WORDS = {"exit", "quit"}


class ChatSession:
    """The conversation so far; the image goes with the first user turn."""

    def __init__(self, model, image: Image.Image | None = None, gen: GenerationConfig | None = None):
        self.model = model
        self.gen = gen or GenerationConfig(max_new_tokens=512)
        self.messages: list[dict] = []
        self.image = None  # the image as the model reads it
        self.pixels = None  # ... batched, on the model's device
        if image is not None:
            self.image = model.image_reader.read(image.convert("RGB"))
            self.pixels = place_images(batch_images([self.image]), model.device, model.dtype)

    @torch.no_grad()
    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> str:
        """The reply to ``question``; ``on_text`` receives the reply piece by piece as it is generated."""
        text = question.replace(IMAGE_PLACEHOLDER, "").strip()
        if not self.messages and self.pixels is not None:
            text = f"{IMAGE_PLACEHOLDER}\n{text}"
        self.messages.append({"role": "user", "content": text})
        ids = torch.tensor([build_prompt(self.model, self.messages, self.image)], device=self.model.device)
        tok = self.model.tokenizer
        stops = set(default_stop_ids(self.model))
        produced: list[int] = []
        shown = ""

        def stream(token: torch.Tensor) -> None:
            nonlocal shown
            t = int(token[0])
            if t in stops:
                return
            produced.append(t)
            current = tok.decode(produced, skip_special_tokens=True)
            if on_text is not None and current.startswith(shown) and len(current) > len(shown):
                on_text(current[len(shown) :])
                shown = current

        pixels = self.pixels if sum(IMAGE_PLACEHOLDER in m["content"] for m in self.messages) else None
        generate(self.model, ids, **(pixels or {}), cfg=self.gen, streamer=stream)
        reply = tok.decode(produced, skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO, prompt: str = "user: ") -> int:
    """Read questions until end of input or "exit"; stream each reply. Returns the number of turns."""
    turns = 0
    while True:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return turns
        question = line.strip()
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            return turns
        stdout.write("assistant: ")
        session.ask(question, on_text=lambda piece: (stdout.write(piece), stdout.flush()))
        stdout.write("\n")
        turns += 1
