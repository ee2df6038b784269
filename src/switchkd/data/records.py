"""LLaVA-format records: reading JSON/JSONL files and validating each record with clear errors.

A record is ``{"id": ..., "image": "rel/path.jpg" (optional), "conversations": [{"from": "human",
"value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A record that cannot be used; the message names the record."""


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a LLaVA JSON (a list) or JSONL file; malformed JSON names the line/position."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    try:
        return _parse_records(path, text)
    except RecursionError:
        raise RecordError(f"{path}: JSON nested too deeply to be a LLaVA record file") from None


def require_records(records: list, path: str | Path) -> list:
    """``records``, or an error: training on an empty file would have nothing to learn from."""
    if not records:
        raise RecordError(f"data.train: {path} holds no records")
    return records


def _parse_records(path: Path, text: str) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


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
