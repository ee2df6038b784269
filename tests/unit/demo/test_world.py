"""The built-in world: deterministic per seed, balanced, and readable by the dataset."""

import hashlib
import json
from collections import Counter

import pytest
from transformers import AutoTokenizer

from switchkd.data.records import load_records
from switchkd.demo.tokenizer import train_tokenizer
from switchkd.demo.world import COLOURS, KINDS, TAUGHT, WorldConfig, corpus, write_world

SMALL = dict(train_images=40, val_images=10, test_images=70, image_size=48)


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path):
    write_world(WorldConfig(seed=3, **SMALL), tmp_path / "a")
    write_world(WorldConfig(seed=3, **SMALL), tmp_path / "b")
    write_world(WorldConfig(seed=4, **SMALL), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_balanced_questions(tmp_path):
    paths = write_world(WorldConfig(seed=0, **SMALL), tmp_path)
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    kinds = Counter(r["type"] for r in test)
    assert set(kinds) == set(TAUGHT) and max(kinds.values()) - min(kinds.values()) <= 1
    colours = Counter(r["answer"] for r in test if r["type"] == "colour")
    assert set(colours) <= set(COLOURS) and len(colours) >= 3
    stats = json.loads(paths["stats"].read_text())
    assert set(stats["train"]) == set(TAUGHT)


def test_every_kind_on_request(tmp_path):
    """Existence (yes and no alternating exactly) and multiple choice are asked when the config names them."""
    paths = write_world(WorldConfig(seed=0, kinds=KINDS, **SMALL), tmp_path)
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    kinds = Counter(r["type"] for r in test)
    assert set(kinds) == set(KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    yes_no = Counter(r["answer"] for r in test if r["type"] == "exists")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 1
    letters = Counter(r["answer"] for r in test if r["type"] == "choice")
    assert set(letters) <= set("ABCD") and len(letters) >= 3
    assert set(json.loads(paths["stats"].read_text())["train"]) == set(KINDS)
    only = write_world(WorldConfig(seed=0, kinds=["exists"], **SMALL), tmp_path / "exists")
    assert {json.loads(line)["type"] for line in only["test"].read_text().splitlines()} == {"exists"}


@pytest.mark.parametrize("kinds", [(), ("colour", "texture")])
def test_unknown_or_no_kinds_are_refused(kinds):
    with pytest.raises(ValueError, match="valid kinds are colour, shape"):
        WorldConfig(kinds=kinds)


def test_files_are_llava_format_and_tokenizer_works(tmp_path):
    paths = write_world(WorldConfig(seed=0, **SMALL), tmp_path)
    pt, dft = load_records(paths["pt"]), load_records(paths["dft"])
    assert len(pt) == len(dft) == 40
    assert dft[0]["conversations"][0]["value"].startswith("<image>\n")
    assert (tmp_path / pt[0]["image"]).is_file()
    tok = train_tokenizer(corpus(paths), vocab_size=400, out_dir=tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for special in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    text = dft[0]["conversations"][1]["value"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_more_test_images_change_no_training_text(tmp_path):
    """The training splits and the tokenizer's corpus are the same however many test images the world has
    (each split draws from its own stream, and the held-out questions stay out of the corpus)."""
    small = write_world(WorldConfig(seed=2, **SMALL), tmp_path / "small")
    large = write_world(WorldConfig(seed=2, **(SMALL | {"test_images": 140})), tmp_path / "large")
    assert small["dft"].read_bytes() == large["dft"].read_bytes()
    assert small["pt"].read_bytes() == large["pt"].read_bytes()
    assert corpus(small) == corpus(large)
