"""LLaVA-format records: reading JSON/JSONL files and validating each record with clear errors.

A record is ``{"id": ..., "image": "rel/path.jpg" (optional), "conversations": [{"from": "human",
"value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}``.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from switchkd.config import read_utf8

IMAGE_PLACEHOLDER = "<image>"
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A record that cannot be used; the message names the record."""


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a LLaVA JSON (a list) or JSONL file; malformed JSON names the line/position."""
    path, text = _read_text(path)
    return [record for _, _, record in _spans(path, text)]


def require_records(records: Sequence, path: str | Path) -> Sequence:
    """``records``, or an error: training on an empty file would have nothing to learn from."""
    if not len(records):
        raise RecordError(f"data.train: {path} holds no records")
    return records


def _read_text(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path, read_utf8(path, RecordError)


def _spans(path: Path, text: str) -> Iterator[tuple[int, int, Any]]:
    """``(start, end, record)`` for each record: ``text[start:end]`` is the record's own JSON."""
    try:
        yield from _jsonl_items(path, text) if path.suffix == ".jsonl" else _json_list_items(path, text)
    except RecursionError:
        raise RecordError(f"{path}: JSON nested too deeply to be a LLaVA record file") from None


def _jsonl_items(path: Path, text: str) -> Iterator[tuple[int, int, Any]]:
    start = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield start, start + len(line), json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
        start += len(line) + 1


_SPACE = re.compile(r"[ \t\n\r]*")


def _json_list_items(path: Path, text: str) -> Iterator[tuple[int, int, Any]]:
    """The elements of a JSON list, each with its own text (one scan, nothing re-encoded)."""
    decoder = json.JSONDecoder()
    try:
        at = _SPACE.match(text).end()
        if text[at : at + 1] != "[":
            data = json.loads(text)
            raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        at = _SPACE.match(text, at + 1).end()
        if text[at : at + 1] != "]":
            while True:
                record, end = decoder.raw_decode(text, at)
                yield at, end, record
                at = _SPACE.match(text, end).end()
                if text[at : at + 1] == "]":
                    break
                if text[at : at + 1] != ",":
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
                at = _SPACE.match(text, at + 1).end()
        rest = _SPACE.match(text, at + 1).end()
        if rest != len(text):
            raise json.JSONDecodeError("Extra data", text, rest)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


class RecordStore(Sequence):
    """Records kept as their UTF-8 JSON text in one buffer (start and end offsets per record), decoded
    on access.

    A handful of arrays whatever the count: forked DataLoader workers share their pages, where a list
    of 665k dicts would be copied page by page into every worker as reference counts change. Loading
    streams the file (no parsed record is kept); for an ASCII file the buffer is the file itself.
    ``sizes`` (bytes of JSON) and ``has_image`` serve the length-grouped sampler without decoding.
    """

    def __init__(self, buffer: bytes, starts, ends, has_image):
        self.buffer = np.frombuffer(buffer, dtype=np.uint8)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.has_image = np.asarray(has_image, dtype=bool)

    @classmethod
    def load(cls, path: str | Path) -> RecordStore:
        path, text = _read_text(path)
        starts, ends, has_image = array("q"), array("q"), array("b")
        for start, end, record in _spans(path, text):
            starts.append(start)
            ends.append(end)
            has_image.append(isinstance(record, dict) and bool(record.get("image")))
        if text.isascii():  # character offsets are byte offsets: keep the file's bytes as they are
            return cls(text.encode("ascii"), starts, ends, has_image)
        return cls.from_texts((text[a:b] for a, b in zip(starts, ends)), has_image)

    @classmethod
    def from_texts(cls, texts: Iterable[str], has_image) -> RecordStore:
        encoded = [t.encode("utf-8") for t in texts]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        return cls(b"".join(encoded), ends - [len(b) for b in encoded], ends, has_image)

    @classmethod
    def from_records(cls, records: Iterable[Any]) -> RecordStore:
        records = list(records)
        has_image = [isinstance(r, dict) and bool(r.get("image")) for r in records]
        return cls.from_texts((json.dumps(r, ensure_ascii=False) for r in records), has_image)

    @property
    def sizes(self) -> np.ndarray:
        """Bytes of each record's JSON: a length estimate that costs nothing to compute."""
        return self.ends - self.starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        index %= len(self)
        return json.loads(self.buffer[self.starts[index] : self.ends[index]].tobytes())


def record_name(record: Any, index: int) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


def to_messages(record: Any, index: int) -> tuple[list[dict[str, str]], str | None]:
    """Chat messages (role/content) and the image path of a record, or a RecordError.

    A record with an image but no ``<image>`` in its text gets one in front of the first user turn
    (as LLaVA does); more placeholders than images is an error.
    """
    name = record_name(record, index)
    if not isinstance(record, dict):
        raise RecordError(f"{name}: not a JSON object")
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError(f"{name}: missing or empty 'conversations' list")
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(f"{name}: 'image' must be one relative path (string), got {type(image).__name__}")
    messages = []
    for turn, msg in enumerate(convs):
        if not isinstance(msg, dict) or "from" not in msg or "value" not in msg:
            raise RecordError(f"{name}: turn {turn} needs 'from' and 'value'")
        role = ROLE_OF.get(msg["from"]) if isinstance(msg["from"], str) else None
        if role is None:
            raise RecordError(f"{name}: turn {turn} has unknown speaker {msg['from']!r} (human, gpt or system)")
        if not isinstance(msg["value"], str):
            raise RecordError(f"{name}: turn {turn} 'value' must be a string")
        messages.append({"role": role, "content": msg["value"]})
    body = [m for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]):
        raise RecordError(f"{name}: a system message may only come first")
    for turn, m in enumerate(body):
        expected = "user" if turn % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise RecordError(
                f"{name}: turns must alternate human/gpt starting with human (turn {turn} is {m['role']})"
            )
    if not any(m["role"] == "assistant" for m in body):
        raise RecordError(f"{name}: no gpt turn to learn from")
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    for i, m in enumerate(messages):
        if i != first_user and IMAGE_PLACEHOLDER in m["content"]:
            raise RecordError(f"{name}: {IMAGE_PLACEHOLDER} may only appear in the first human turn ({m['role']} turn)")
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    n_images = 0 if image is None else 1
    if placeholders > n_images:
        raise RecordError(f"{name}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s)")
    if n_images and not placeholders:
        first = next(m for m in messages if m["role"] == "user")
        first["content"] = f"{IMAGE_PLACEHOLDER}\n{first['content']}"
    return messages, image
