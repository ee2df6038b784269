"""The dataset on real files: bad input gives clear errors or counted skips; collation; sampler."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from switchkd.data.dataset import Collator, LengthGroupedSampler, LlavaDataset, SampleError
from switchkd.data.images import SquareImages, default_image_processor
from switchkd.data.records import RecordError, load_records
from switchkd.data.templates import get_template

N_IMG = 4


def _good(i, image="ok.png"):
    rec = {
        "id": f"s{i}",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "a red circle ."},
        ],
    }
    if image:
        rec["image"] = image
    return rec


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "ok.png")
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "outside.png")
    good = root / "truncated.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(good)
    good.write_bytes(good.read_bytes()[:60])
    (root / "notimage.png").write_text("this is not an image")
    (root / "loop.png").symlink_to(root / "loop.png")  # a symlink to itself
    (root / "bomb.png").write_bytes(_png_header(20_000, 20_000))  # 400 M pixels claimed: a decompression bomb
    return root


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 8-bit grey pixels (its data is one empty row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def _dataset(records, root, tiny_tokenizer_dir, **kw):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    return LlavaDataset(
        records,
        root,
        tokenizer=tok,
        template=get_template("chatml"),
        images=SquareImages(default_image_processor("clip_vision_model", 28), N_IMG, kw.pop("pad_to_square", True)),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        **kw,
    )


BAD = [
    ({"id": "m", "image": "missing.png", "conversations": _good(0)["conversations"]}, "bad_image", "image not found"),
    (_good(1, "truncated.png"), "bad_image", "cannot read image"),
    (_good(2, "notimage.png"), "bad_image", "cannot read image"),
    (_good(3, "loop.png"), "bad_image", "cannot be resolved"),
    (_good(4, "a\x00b.png"), "bad_image", "contains a NUL byte"),
    (_good(5, "bomb.png"), "bad_image", "refusing image .*bomb.png.*exceeds limit"),
    (_good(3, "../outside.png"), "bad_image", "escapes the image root"),
    ({"id": "nc", "image": "ok.png"}, "malformed_record", "conversations"),
    ({"id": "role", "conversations": [{"from": "robot", "value": "hi"}]}, "malformed_record", "unknown speaker"),
    (
        {"id": "order", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]},
        "malformed_record",
        "alternate",
    ),
    (
        {
            "id": "two",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}],
        },
        "malformed_record",
        "2 <image> placeholder",
    ),
    (
        {
            "id": "long",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": "word " * 150 + "<image>"}, {"from": "gpt", "value": "x"}],
        },
        "too_long",
        "max_length",
    ),
]


@pytest.mark.parametrize("record,reason,message", BAD, ids=[b[0].get("id", "?") for b in BAD])
def test_bad_input_raises_naming_the_record(folder, tiny_tokenizer_dir, record, reason, message):
    ds = _dataset([_good(0), record], folder, tiny_tokenizer_dir, max_length=100)
    assert ds[0]["input_ids"].numel() > 0
    with pytest.raises(SampleError, match=message) as err:
        ds[1]
    assert err.value.reason == reason
    assert "record 1" in str(err.value)


def test_bad_input_is_skipped_and_counted(folder, tiny_tokenizer_dir):
    records = [_good(i) for i in range(3)] + [b[0] for b in BAD]
    ds = _dataset(records, folder, tiny_tokenizer_dir, max_length=100, on_error="skip")
    loader = DataLoader(ds, batch_size=4, collate_fn=Collator(ds.tokenizer.pad_token_id), num_workers=2)
    total, kept = Counter(), 0
    for batch in loader:
        total.update(batch["skipped"])
        kept += 0 if batch["input_ids"] is None else batch["input_ids"].shape[0]
    assert kept == 3
    assert total == Counter(reason for _, reason, _ in BAD)


def test_a_cached_sample_is_loaded_once_and_handed_out_unchanged(folder, tiny_tokenizer_dir):
    """With ``cache`` a sample is read once: later epochs get the same tensors even after the image is
    gone, equal to what an uncached dataset loads, and the collator's padding never writes into them."""
    longer = _good(1)["conversations"] + [{"from": "human", "value": "And?"}, {"from": "gpt", "value": "nothing ."}]
    records = [_good(0), {**_good(1), "conversations": longer}, BAD[0][0]]
    plain = _dataset(records, folder, tiny_tokenizer_dir, max_length=100, on_error="skip")
    cached = _dataset(records, folder, tiny_tokenizer_dir, max_length=100, on_error="skip", cache=True)
    collate = Collator(cached.tokenizer.pad_token_id)
    want = [plain.load(i) for i in range(2)]
    first = [cached[i] for i in range(3)]
    collate(first)  # pads sample 0 to sample 1's length
    (folder / "ok.png").unlink()
    again = [cached[i] for i in range(3)]
    assert all(a is b for a, b in zip(first, again))
    assert again[2] == {"skipped": BAD[0][1], "id": 2}
    for i in range(2):
        for key in ("input_ids", "labels", "pixel_values"):
            assert torch.equal(again[i][key], want[i][key]), key
    assert plain[0] == {"skipped": BAD[0][1], "id": 0}  # the uncached dataset reads the file again


def test_malformed_files_name_the_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "conversations": []},\n {"id": 2,, }]')
    with pytest.raises(RecordError, match="line 2"):
        load_records(bad)
    bad_l = tmp_path / "bad.jsonl"
    bad_l.write_text('{"id": 1}\n{"id": \n')
    with pytest.raises(RecordError, match="bad.jsonl:2"):
        load_records(bad_l)
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(RecordError, match="JSON list"):
        load_records(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "none.json")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.json", '[{"id": "caf\xe9"}]'.encode("latin-1"), r"latin1\.json: not UTF-8 text \(byte 12"),
        ("utf16.jsonl", '{"id": 1}\n'.encode("utf-16"), r"utf16\.jsonl: not UTF-8 text \(byte 0"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, r"deep\.json: JSON nested too deeply"),
    ],
)
def test_undecodable_and_hostile_files_name_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RecordError, match=message):
        load_records(tmp_path / name)


@pytest.mark.parametrize("content", ["[]", "", "\n  \n"])
def test_an_empty_training_file_is_refused(tmp_path, content):
    from switchkd.data.records import require_records

    path = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    path.write_text(content)
    with pytest.raises(RecordError, match=f"data.train: {path} holds no records"):
        require_records(load_records(path), path)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_and_keeps_image_order(folder, tiny_tokenizer_dir, side):
    records = [_good(0), _good(1, image=None), _good(2)]
    records[1]["conversations"][0]["value"] = "what is a circle ? " * 3
    ds = _dataset(records, folder, tiny_tokenizer_dir)
    samples = [ds[i] for i in range(3)]
    batch = Collator(ds.tokenizer.pad_token_id, side)(samples)
    assert batch["pixel_values"].shape == (2, 3, 28, 28)
    for i, s in enumerate(samples):
        n = s["input_ids"].numel()
        row = batch["input_ids"][i]
        real = batch["attention_mask"][i].bool()
        assert real.sum() == n and torch.equal(row[real], s["input_ids"])
        assert torch.equal(batch["labels"][i][real], s["labels"])
        assert (batch["labels"][i][~real] == -100).all()
        if side == "left":
            assert real[-1]
        else:
            assert real[0]
    assert batch["num_items"] == sum(int((s["labels"][1:] != -100).sum()) for s in samples)


def test_image_is_padded_to_square_with_mean_colour(folder):
    proc = default_image_processor("clip_vision_model", 28)
    from switchkd.data.images import expand_to_square, mean_colour

    img = expand_to_square(Image.open(folder / "ok.png").convert("RGB"), mean_colour(proc))
    assert img.size == (40, 40)
    assert img.getpixel((0, 0)) == mean_colour(proc) and img.getpixel((20, 20)) == (200, 10, 10)


def test_length_grouped_sampler_is_a_seeded_permutation():
    lengths = [(i * 37) % 101 for i in range(300)]
    s = LengthGroupedSampler(lengths, batch_size=10, seed=1, mega_batch_mult=5)
    order = list(s)
    assert sorted(order) == list(range(300))
    assert order == list(LengthGroupedSampler(lengths, batch_size=10, seed=1, mega_batch_mult=5))
    s.set_epoch(1)
    assert list(s) != order
    spread = [
        max(lengths[i] for i in order[j : j + 10]) - min(lengths[i] for i in order[j : j + 10])
        for j in range(0, 300, 10)
    ]
    assert sum(spread) / len(spread) < 20  # random batches would spread ~90


def test_records_json_roundtrip(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(_good(i)) + "\n" for i in range(3)))
    assert [r["id"] for r in load_records(path)] == ["s0", "s1", "s2"]


@pytest.mark.parametrize(
    ("array", "mode", "want"),
    [
        (np.full((4, 6), 32768, dtype=np.uint16), None, 128),  # 16-bit mid-grey (PIL alone: 255)
        (np.full((4, 6), 65535, dtype=np.uint16), None, 255),
        (np.full((4, 6), 257, dtype=np.uint16), None, 1),
        (np.full((4, 6), 0.5, dtype=np.float32), "F", 128),  # float in [0, 1] (PIL alone: 0)
        (np.full((4, 6), 1.0, dtype=np.float32), "F", 255),
        (np.full((4, 6), 100.0, dtype=np.float32), "F", 100),  # float already on 0-255
        (np.full((4, 6), 200, dtype=np.uint8), None, 200),  # 8-bit unchanged
    ],
)
def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path, array, mode, want):
    from switchkd.data.images import load_image

    path = tmp_path / ("img.tiff" if mode == "F" else "img.png")
    Image.fromarray(array, mode=mode).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (4, 6, 3) and (pixels == want).all()
