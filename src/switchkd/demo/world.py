"""The built-in visual world: seeded images of coloured shapes on a grid, with captions (for PT)
and questions of several kinds (for DFT and evaluation), written in the LLaVA format so they
travel the same code path as real data.

    from switchkd.demo.world import WorldConfig, write_world
    paths = write_world(WorldConfig(seed=0), "runs/world")

Question kinds: colour, shape, count, position, size (short answers), exists (yes/no, balanced
like POPE, half of the "no" questions adversarial: a present shape in an absent colour) and
choice (A-D multiple choice like MMBench). The world asks the first five unless told otherwise
(``WorldConfig.kinds``): the demo's teacher does not learn the last two (see ``TAUGHT``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from switchkd.evaluation.benchmarks import CHOICE, SHORT  # the world asks with the benchmarks' own suffixes

BACKGROUND = (124, 118, 108)
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 215), "yellow": (225, 195, 35)}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
KINDS = ("colour", "shape", "count", "position", "size", "exists", "choice")
TAUGHT = ("colour", "shape", "count", "position", "size")
"""The kinds the world asks by default. Existence and multiple choice stay out: the demo's teacher
(128 wide, 4 layers) stayed at chance on both after the demo's 900 steps (53 % and 22 % of 60
questions, chance 50 % and 25 %) and after 2,250 (57 % and 20 %), while the other kinds rose (count
67 -> 80 %), over two seeds of ``switchkd reproduce`` as well; a kind the teacher cannot answer gives the
student nothing to distil and takes a share of every model's training questions. Ask for them with
``WorldConfig(kinds=KINDS)``."""
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in the picture?", "Give a short caption of the image.")
NUMBER = ("0", "1", "2", "3", "4", "5")


@dataclass
class WorldConfig:
    seed: int = 0
    """Everything (images, questions, splits) is a function of this seed."""
    image_size: int = 64
    """Canvas side in pixels (the grid is 3 x 3)."""
    min_objects: int = 1
    max_objects: int = 3
    noise: float = 6.0
    """Standard deviation of Gaussian pixel noise (0 for clean images)."""
    distractors: int = 2
    """Grey specks per image that are not objects."""
    train_images: int = 600
    val_images: int = 60
    test_images: int = 120
    turns_per_image: int = 3
    """Question/answer turns per DFT training conversation."""
    questions_per_test_image: int = 3
    kinds: tuple[str, ...] = TAUGHT
    """Question kinds asked, in equal shares (``KINDS`` for all seven)."""

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)  # a list from a JSON or YAML config
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"world kinds {list(self.kinds)}: valid kinds are {', '.join(KINDS)} (at least one)")
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ValueError("need 1 <= min_objects <= max_objects <= 9")
        if self.image_size < 24:
            raise ValueError("image_size must be >= 24")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} at the {self.position}"


def sample_scene(rng: random.Random, cfg: WorldConfig) -> list[Obj]:
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    cells = rng.sample(range(len(POSITIONS)), n)
    objs, seen = [], set()
    for cell in cells:
        while True:  # colour+shape unique within a scene, so every question has one answer
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            if (shape, colour) not in seen:
                seen.add((shape, colour))
                break
        objs.append(Obj(shape, colour, rng.choice(SIZES), cell))
    return objs


def render(objs: list[Obj], cfg: WorldConfig, rng: random.Random) -> Image.Image:
    s = cfg.image_size
    # A mid-grey canvas near the CLIP mean colour: after normalisation the background is ~0 and
    # the objects carry the signal (a white canvas would dominate every patch embedding).
    img = Image.new("RGB", (s, s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = s / 3
    for _ in range(cfg.distractors):
        x, y = rng.uniform(0, s - 2), rng.uniform(0, s - 2)
        draw.rectangle([x, y, x + 1.5, y + 1.5], fill=(90, 90, 90))
    for o in objs:
        cx, cy = (o.cell % 3 + 0.5) * cell, (o.cell // 3 + 0.5) * cell
        r = cell * (0.42 if o.size == "large" else 0.24)
        box = [cx - r, cy - r, cx + r, cy + r]
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif o.shape == "square":
            draw.rectangle(box, fill=colour)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    if cfg.noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, cfg.noise, arr.shape)
        img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    return img


ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES}


def cell_labels(objs: list[Obj]) -> list[dict | None]:
    """What each of the 9 cells holds (``{shape, colour, size}``, or None when empty): the labels the
    shared vision encoder is pre-trained on (``demo/encoder.py``)."""
    cells: list[dict | None] = [None] * len(POSITIONS)
    for o in objs:
        cells[o.cell] = {"shape": o.shape, "colour": o.colour, "size": o.size}
    return cells


def caption(objs: list[Obj]) -> str:
    parts = [o.phrase() for o in sorted(objs, key=lambda o: o.cell)]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def _short(question: str) -> str:
    return f"{question}\n{SHORT}"


def ask(kind: str, objs: list[Obj], rng: random.Random, want_yes: bool | None = None) -> dict:
    """One question of ``kind`` about the scene: {kind, question, answer[, options]}."""
    by_shape = Counter(o.shape for o in objs)
    if kind == "colour":
        unique = [o for o in objs if by_shape[o.shape] == 1]
        o = rng.choice(unique) if unique else rng.choice(objs)
        q = f"What colour is the {o.shape}?" if unique else f"What colour is the {o.shape} at the {o.position}?"
        return {"kind": kind, "question": _short(q), "answer": o.colour}
    if kind == "shape":
        o = rng.choice(objs)
        return {"kind": kind, "question": _short(f"What shape is at the {o.position}?"), "answer": o.shape}
    if kind == "count":
        if rng.random() < 0.5:
            return {"kind": kind, "question": _short("How many shapes are there?"), "answer": NUMBER[len(objs)]}
        colour = rng.choice(list(COLOURS))
        n = sum(o.colour == colour for o in objs)
        return {"kind": kind, "question": _short(f"How many {colour} shapes are there?"), "answer": NUMBER[n]}
    if kind == "position":
        o = rng.choice(objs)
        return {"kind": kind, "question": _short(f"Where is the {o.colour} {o.shape}?"), "answer": o.position}
    if kind == "size":
        o = rng.choice(objs)
        return {"kind": kind, "question": _short(f"What size is the {o.colour} {o.shape}?"), "answer": o.size}
    if kind == "exists":
        yes = rng.random() < 0.5 if want_yes is None else want_yes
        present = {(o.colour, o.shape) for o in objs}
        if yes:
            colour, shape = rng.choice(sorted(present))
        else:
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            adversarial = [(c, s) for c, s in absent if s in by_shape]
            colour, shape = rng.choice(adversarial if adversarial and rng.random() < 0.5 else absent)
        return {
            "kind": kind,
            "question": _short(f"Is there a {colour} {shape} in the image?"),
            "answer": "yes" if yes else "no",
        }
    if kind == "choice":
        o = rng.choice(objs)
        if rng.random() < 0.5:
            stem, truth, pool = f"What colour is the {o.shape} at the {o.position}?", o.colour, list(COLOURS)
        else:
            stem, truth, pool = f"What shape is at the {o.position}?", o.shape, list(SHAPES)
        options = rng.sample(pool, len(pool))
        letters = "ABCD"
        lines = "\n".join(f"{letters[i]}. {opt}" for i, opt in enumerate(options))
        return {
            "kind": kind,
            "question": f"{stem}\n{lines}\n{CHOICE}",
            "answer": letters[options.index(truth)],
            "options": options,
        }
    raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(KINDS)}")


def _balanced_kinds(rng: random.Random, n: int, asked: tuple[str, ...]) -> list[str]:
    kinds = [asked[i % len(asked)] for i in range(n)]
    rng.shuffle(kinds)
    return kinds


def _questions(kinds: list[str], objs, rng: random.Random, yes_turn: int) -> tuple[list[dict], int]:
    """One image's questions of the given kinds; existence questions alternate yes and no exactly."""
    qas = []
    for kind in kinds:
        want = None
        if kind == "exists":
            want, yes_turn = yes_turn % 2 == 0, yes_turn + 1
        qas.append(ask(kind, objs, rng, want))
    return qas, yes_turn


def _conversation(record_id: str, image: str, qas: list[dict]) -> dict:
    convs = []
    for j, qa in enumerate(qas):
        convs.append({"from": "human", "value": ("<image>\n" if j == 0 else "") + qa["question"]})
        convs.append({"from": "gpt", "value": qa["answer"]})
    return {"id": record_id, "image": image, "conversations": convs}


def _question_rows(prefix: str, image: str, qas: list[dict]) -> list[dict]:
    rows = []
    for j, qa in enumerate(qas):
        row = {"question_id": f"{prefix}-{j}", "image": image, "text": qa["question"], "answer": qa["answer"]}
        row["type"] = qa["kind"]
        if "options" in qa:
            row["options"] = qa["options"]
        rows.append(row)
    return rows


def write_world(cfg: WorldConfig, out_dir: str | Path) -> dict[str, Path]:
    """Images and LLaVA-format files for the three splits; returns the paths written."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: dict[str, list] = {"pt": [], "dft": [], "val": [], "test": [], "scenes": []}
    yes_turn = 0  # alternate yes/no exactly, split by split
    for split, count, offset in (
        ("train", cfg.train_images, 0),
        ("val", cfg.val_images, 1),
        ("test", cfg.test_images, 2),
    ):
        rng = random.Random(f"{cfg.seed}-{split}-{offset}")
        per_image = cfg.turns_per_image if split == "train" else cfg.questions_per_test_image
        kinds = _balanced_kinds(rng, count * per_image, cfg.kinds)
        for i in range(count):
            objs = sample_scene(rng, cfg)
            name = f"{split}_{i:05d}.png"
            image = f"images/{name}"
            render(objs, cfg, rng).save(out / "images" / name)
            if split == "train":
                caption_turns = [
                    {"from": "human", "value": f"<image>\n{rng.choice(CAPTION_PROMPTS)}"},
                    {"from": "gpt", "value": caption(objs)},
                ]
                records["pt"].append({"id": f"pt-{i}", "image": image, "conversations": caption_turns})
                records["scenes"].append({"image": image, "cells": cell_labels(objs)})
            qas, yes_turn = _questions(kinds[i * per_image : (i + 1) * per_image], objs, rng, yes_turn)
            if split == "train":
                records["dft"].append(_conversation(f"dft-{i}", image, qas))
            else:
                records[split] += _question_rows(f"{split}-{i}", image, qas)
    return _write_world_files(out, cfg, records)


def _write_world_files(out: Path, cfg: WorldConfig, records: dict[str, list]) -> dict[str, Path]:
    paths = {
        "pt": out / "pt_train.json",
        "dft": out / "dft_train.json",
        "val": out / "val.jsonl",
        "test": out / "test.jsonl",
        "stats": out / "stats.json",
        "config": out / "world.json",
        "scenes": out / "scenes.json",
    }
    paths["scenes"].write_text(json.dumps(records["scenes"]))
    paths["pt"].write_text(json.dumps(records["pt"], indent=1))
    paths["dft"].write_text(json.dumps(records["dft"], indent=1))
    for key in ("val", "test"):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in records[key]))
    paths["stats"].write_text(json.dumps(world_stats(records["dft"], records["test"]), indent=2))
    paths["config"].write_text(json.dumps(asdict(cfg), indent=2))
    return paths


def world_stats(dft: list[dict], test: list[dict]) -> dict:
    """Answer distributions per question kind (train turns and test questions)."""

    def dist(pairs):
        table: dict[str, Counter] = {}
        for kind, answer in pairs:
            table.setdefault(kind, Counter())[answer] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}

    train_pairs = []
    for rec in dft:
        convs = rec["conversations"]
        for q, a in zip(convs[::2], convs[1::2]):
            train_pairs.append((_kind_of(q["value"]), a["value"]))
    return {"train": dist(train_pairs), "test": dist((r["type"], r["answer"]) for r in test)}


def _kind_of(question: str) -> str:
    q = question.replace("<image>\n", "")
    if q.endswith(CHOICE):
        return "choice"
    for prefix, kind in (
        ("What colour", "colour"),
        ("What shape", "shape"),
        ("How many", "count"),
        ("Where is", "position"),
        ("What size", "size"),
        ("Is there", "exists"),
    ):
        if q.startswith(prefix):
            return kind
    return "other"


def corpus(paths: dict[str, Path]) -> list[str]:
    """The training texts of the world (captions and conversations), for training its tokenizer: the
    held-out questions stay out of it, so the tokenizer, and everything trained with it, is the same
    however many test images the world has (byte-level BPE encodes any text)."""
    texts = []
    for key in ("pt", "dft"):
        for rec in json.loads(paths[key].read_text()):
            texts.extend(m["value"] for m in rec["conversations"])
    return texts
