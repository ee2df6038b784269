"""Answer questions about images with a VLM, in batches (evaluation and ``switchkd predict``).

Usage:

    from switchkd.inference.predict import Question, answer_questions
    answers = answer_questions(model, [Question("q1", "What colour is it?", "img.png")])
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from switchkd.config import read_utf8
from switchkd.data.images import ImageError, batch_images, load_image, place_images, resolve_image_path
from switchkd.data.records import IMAGE_PLACEHOLDER
from switchkd.data.tokenize import prompt_ids
from switchkd.models.generation import GenerationConfig, default_stop_ids, generate

log = logging.getLogger("switchkd.predict")


@dataclass
class Question:
    id: str
    text: str
    image: str | Image.Image | None = None
    """A path, an already loaded image, or None for a text-only question."""


def read_questions(path: str | Path, image_root: str | Path | None = None) -> list[Question]:
    """The rows of a LLaVA question JSONL (question_id, text, optional image), all checked before any
    model loads: a problem is one error naming ``file:line``, a repeated question_id names both lines."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    questions, first_line = [], {}
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: malformed JSON: {exc.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("question_id"), (str, int)):
            raise ValueError(f"{where}: a question needs a 'question_id' (string or integer)")
        if not isinstance(row.get("text"), str):
            raise ValueError(f"{where}: question {row['question_id']!r} needs a 'text' string")
        qid, image = row["question_id"], row.get("image")
        if qid in first_line:
            raise ValueError(f"{where}: question_id {qid!r} repeats line {first_line[qid]} (ids must be unique)")
        first_line[qid] = lineno
        if image is not None and not isinstance(image, str):
            raise ValueError(f"{where}: 'image' must be a relative path (string)")
        try:
            resolved = str(resolve_image_path(root, image)) if image else None
        except ImageError as exc:
            raise ValueError(f"{where}: {exc}") from None
        questions.append(Question(qid, row["text"], resolved))
    return questions


def read_answers(path: str | Path, keys: tuple[str, ...] = ("question_id",), *, cut_torn: bool = False) -> dict:
    """The rows of an answers JSONL by question_id, each holding ``keys``. A torn last line (an
    interrupted run wrote it half) is dropped with a warning naming it, so its question is answered
    again, and with ``cut_torn`` cut from the file (before more answers are appended to it); blank lines
    are passed over; any other bad line is an error naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        return {}
    text = read_utf8(path, ValueError)
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        log.warning(
            "%s:%d: incomplete last line (an interrupted run) dropped; its question is answered again", path, len(lines)
        )
        lines = lines[:-1]
        if cut_torn:
            path.write_text("".join(line + "\n" for line in lines))
    rows = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not all(key in row for key in keys):
                raise KeyError(keys)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{lineno}: not an answer row (JSON with {' and '.join(keys)})") from None
        rows[row["question_id"]] = row
    return rows


def answered_ids(path: str | Path) -> set:
    """Question ids already answered in an answers JSONL (a torn last line is cut, see ``read_answers``)."""
    return set(read_answers(path, cut_torn=True))


def predict_file(
    model,
    questions: list[Question],
    out: str | Path,
    *,
    model_id: str = "model",
    batch_size: int = 8,
    max_new_tokens: int = 128,
) -> tuple[int, int]:
    """Answer ``questions`` into the answers JSONL ``out``, appended and flushed batch by batch, so an
    interrupted run resumes where it stopped: ids already in ``out`` are skipped (a torn last line is
    cut and its question asked again). Each row: question_id, prompt, text, model_id (LLaVA's answer
    file). Returns (answered now, already there)."""
    from tqdm.auto import tqdm

    out = Path(out)
    done = answered_ids(out)
    todo = [q for q in questions if q.id not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(questions), initial=len(questions) - len(todo), desc="predict", dynamic_ncols=True) as bar:
        for batch in _batches(todo, batch_size):
            answers = answer_questions(model, batch, batch_size=batch_size, max_new_tokens=max_new_tokens)
            rows = [{"question_id": q.id, "prompt": q.text, "text": answers[q.id], "model_id": model_id} for q in batch]
            append_rows(out, rows)
            bar.update(len(batch))
    return len(todo), len(done)


def append_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` appended to the JSONL ``path`` and on disk before this returns (a kill loses no row it
    wrote; a torn last line is what ``read_answers`` drops)."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return read_utf8(path, ValueError).splitlines()


def build_prompt(model, messages: list[dict], image: dict | None = None) -> list[int]:
    """The prompt's ids in ``model``'s template; ``image`` (what ``model.image_reader`` read) decides
    how many tokens the image takes where the family reads images at their own resolution."""
    count = model.num_image_tokens
    if image is not None:
        count = model.image_reader.num_tokens(image)
    elif count is None:
        count = 0  # no image read: a prompt with <image> then fails in the forward, naming the mismatch
    return prompt_ids(
        messages,
        model.tokenizer,
        model.template,
        image_token_id=model.image_token_id,
        num_image_tokens=count,
        image_wrap=model.image_wrap,
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
            image = None
            if q.image is not None:
                img = q.image if isinstance(q.image, Image.Image) else load_image(q.image)
                image = model.image_reader.read(img.convert("RGB"))
                images.append(image)
                text = f"{IMAGE_PLACEHOLDER}\n{text}"
            ids.append(build_prompt(model, [{"role": "user", "content": text}], image))
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(ids):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        pixels = place_images(batch_images(images), device, model.dtype) if images else {}
        new = generate(
            model,
            input_ids.to(device),
            mask.to(device),
            **pixels,
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
