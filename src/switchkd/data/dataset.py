"""The LLaVA-format dataset, its collator and a length-grouped sampler.

    ds = LlavaDataset.for_model("data/train.json", "data/images", model, max_length=2048)
    loader = DataLoader(ds, batch_size=8, collate_fn=Collator(model.tokenizer.pad_token_id))

With ``for_model(..., teacher=teacher)`` a sample also carries the teacher's own version of what
differs between the two models (``sample["teacher"]``: its prompt when it takes another number of image
tokens, its pixels when it has another image processor), and the collator pads them into
``batch["teacher"]``; the conversation, and so the supervised tokens, are the same.

Bad input (missing or unreadable image, malformed record, path escaping the image root, over-long
sample, nothing supervised) raises an error naming the record, or with ``on_error="skip"`` yields
``None``; the collator drops it and counts it by reason in ``batch["skipped"]``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from switchkd.data.images import ImageError, batch_images, load_image, resolve_image_path
from switchkd.data.records import RecordError, RecordStore, record_name, to_messages
from switchkd.data.templates import ChatTemplate
from switchkd.data.tokenize import NoSupervisedTokens, SampleTooLong, tokenize_conversation
from switchkd.losses.sequence import IGNORE_INDEX

SKIP_REASONS = {
    RecordError: "malformed_record",
    ImageError: "bad_image",
    SampleTooLong: "too_long",
    NoSupervisedTokens: "no_supervised_tokens",
}


class SampleError(ValueError):
    """A sample that failed; ``reason`` is one of the skip counters."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TeacherView:
    """What the teacher reads differently from the student (None: the student's version)."""

    images: Any = None
    """The teacher's image reader, where it reads pixels otherwise."""
    num_image_tokens: int | None = None
    """The teacher's (fixed) image-token count, where it differs."""


def teacher_view_of(student, teacher) -> TeacherView | None:
    """The teacher's view of a pair's data, or None when both read the same prompt and pixels."""
    pixels = student.image_reader.settings() != teacher.image_reader.settings()
    tokens = student.num_image_tokens != teacher.num_image_tokens
    if not (pixels or tokens):
        return None
    return TeacherView(teacher.image_reader if pixels else None, teacher.num_image_tokens if tokens else None)


IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")
TEACHER_KEYS = ("input_ids", "attention_mask", "labels", *IMAGE_KEYS)


def image_inputs(batch: dict) -> dict:
    """The batch's image tensors: ``pixel_values``, and the images' own shapes where the family reads
    each image at its own size (``image_grid_thw``: Qwen2.5-VL; ``image_sizes``: LLaVA-OneVision)."""
    return {key: batch[key] for key in IMAGE_KEYS if batch.get(key) is not None}


def teacher_view(batch: dict) -> dict:
    """The batch as the teacher reads it: the student's tensors, replaced by the teacher's own versions
    where the collator carried them (``batch["teacher"]``: another image-token count or image processor)."""
    own = batch.get("teacher") or {}
    return {key: own.get(key, batch.get(key)) for key in TEACHER_KEYS}


class LlavaDataset(Dataset):
    """LLaVA-format records as one model reads them: ``images`` (``SquareImages`` or ``GridImages``, from
    ``model.image_reader``) turns the picture into tensors and says how many image tokens it takes; the
    prompt marks them with ``image_token_id`` between the family's ``image_wrap`` ids. With ``cache``
    each sample (or its skip) is kept after its first load and handed out again as it is: for a small
    data set read for several epochs in the process that trains (no DataLoader workers: each would keep a
    copy of its own); the collator builds new tensors and never writes into a sample's."""

    def __init__(
        self,
        records: list[dict] | str | Path,
        image_root: str | Path | None,
        *,
        tokenizer,
        template: ChatTemplate,
        images,
        image_token_id: int,
        image_wrap: tuple[list[int], list[int]] = ([], []),
        max_length: int | None = 2048,
        on_error: str = "raise",
        control_tokens: str = "split",
        teacher: TeacherView | None = None,
        cache: bool = False,
    ):
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None
        if isinstance(records, (str, Path)):
            records = RecordStore.load(records)
        self.records = records if isinstance(records, RecordStore) else RecordStore.from_records(records)
        self.image_root = image_root
        self.tokenizer = tokenizer
        self.template = template
        self.images = images
        self.image_token_id = image_token_id
        self.image_wrap = image_wrap
        self.max_length = max_length
        self.on_error = on_error
        self.control_tokens = control_tokens
        self.teacher = teacher

    @classmethod
    def for_model(cls, records, image_root, model, teacher=None, **kwargs) -> LlavaDataset:
        """A dataset whose template, tokens and image processing match ``model`` (and, with ``teacher``,
        with the teacher's own prompt and pixels where they differ)."""
        return cls(
            records,
            image_root,
            tokenizer=model.tokenizer,
            template=model.template,
            images=model.image_reader,
            image_token_id=model.image_token_id,
            image_wrap=model.image_wrap,
            teacher=None if teacher is None else teacher_view_of(model, teacher),
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.records)

    def approx_lengths(self) -> list[int]:
        """A cheap length estimate per sample for length-grouped batching: about 4 bytes of a record's
        JSON a token, plus the image tokens (nothing is decoded)."""
        return (self.records.sizes // 4 + self.records.has_image * self.images.approx_tokens).tolist()

    def load(self, index: int) -> dict[str, Any]:
        """The sample or a SampleError naming the record."""
        record = self.records[index]
        name = record_name(record, index)
        try:
            messages, image = to_messages(record, index)
            tensors, picture, view, count = {}, None, {}, 0
            if image is not None:
                picture = load_image(resolve_image_path(self.image_root, image))
                tensors = self.images.read(picture)
                count = self.images.num_tokens(tensors)
            tok = self._tokenize(messages, count)
            if self.teacher is not None and self.teacher.num_image_tokens is not None:
                # The same conversation cut after the same text token: the views differ only in their
                # image tokens, so a long sample keeps one-to-one supervised tokens in both.
                images = tok.input_ids.count(self.image_token_id) // max(count, 1)
                length = len(tok.input_ids) + images * (self.teacher.num_image_tokens - count)
                theirs = self._tokenize(messages, self.teacher.num_image_tokens, max_length=length)
                view["input_ids"] = torch.tensor(theirs.input_ids, dtype=torch.long)
                view["labels"] = torch.tensor(theirs.labels, dtype=torch.long)
            if self.teacher is not None and self.teacher.images is not None and picture is not None:
                view |= self.teacher.images.read(picture)
        except tuple(SKIP_REASONS) as exc:
            reason = next(r for cls, r in SKIP_REASONS.items() if isinstance(exc, cls))
            message = str(exc) if str(exc).startswith("record ") else f"{name}: {exc}"
            raise SampleError(message, reason) from None
        sample = {
            "id": record.get("id", index),
            "input_ids": torch.tensor(tok.input_ids, dtype=torch.long),
            "labels": torch.tensor(tok.labels, dtype=torch.long),
            "pixel_values": None,
        } | tensors
        if view:
            sample["teacher"] = view
        return sample

    def _tokenize(self, messages, num_image_tokens: int, max_length: int | None = None):
        return tokenize_conversation(
            messages,
            self.tokenizer,
            self.template,
            image_token_id=self.image_token_id,
            num_image_tokens=num_image_tokens,
            max_length=self.max_length if max_length is None else max_length,
            control_tokens=self.control_tokens,
            image_wrap=self.image_wrap,
        )

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        try:
            sample = self.load(index)
        except SampleError as exc:
            if self.on_error != "skip":
                if get_worker_info() is not None:
                    # Raised in a DataLoader worker, it would reach the main process as a RuntimeError
                    # holding the whole traceback; the message travels as data and raise_sample_error
                    # raises it there as the one-line SampleError it is.
                    return {"error": str(exc), "reason": exc.reason, "id": index}
                raise
            sample = {"skipped": exc.reason, "id": index}
        if self._cache is not None:
            self._cache[index] = sample
        return sample


class Collator:
    """Pads a list of samples into a batch; skipped samples are dropped and counted by reason."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [s for s in samples if "error" in s]
        if failed:  # a sample that failed in a worker: the batch carries only its error
            return {"error": failed[0]["error"], "reason": failed[0]["reason"]}
        skipped = Counter(s["skipped"] for s in samples if "skipped" in s)
        samples = [s for s in samples if "skipped" not in s]
        batch: dict[str, Any] = {"skipped": skipped, "ids": [s["id"] for s in samples]}
        if not samples:
            batch.update(input_ids=None, labels=None, attention_mask=None, pixel_values=None, num_items=0)
            return batch
        input_ids, labels, attention_mask = self._pad([s["input_ids"] for s in samples], [s["labels"] for s in samples])
        images = [_image_of(s) for s in samples if s["pixel_values"] is not None]
        batch.update(
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            pixel_values=None,
            # supervised tokens after the causal shift: the normaliser of the loss
            num_items=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        )
        if images:
            batch.update(batch_images(images))
        views = [s.get("teacher", {}) for s in samples]
        if any(views):
            teacher = {}
            if "input_ids" in views[0]:
                ids, lab, mask = self._pad([v["input_ids"] for v in views], [v["labels"] for v in views])
                teacher.update(input_ids=ids, labels=lab, attention_mask=mask)
            if "pixel_values" in views[0]:
                teacher |= batch_images([_image_of(v) for v in views if "pixel_values" in v])
            batch["teacher"] = teacher
        return batch

    def _pad(self, ids: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(input_ids, labels, attention_mask) padded to the longest sample on ``padding_side``."""
        width = max(x.numel() for x in ids)
        n = len(ids)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        padded_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, (x, y) in enumerate(zip(ids, labels)):
            length = x.numel()
            cols = slice(width - length, width) if self.padding_side == "left" else slice(0, length)
            input_ids[i, cols] = x
            padded_labels[i, cols] = y
            attention_mask[i, cols] = 1
        return input_ids, padded_labels, attention_mask


def _image_of(sample: dict) -> dict:
    return {key: sample[key] for key in IMAGE_KEYS if key in sample}


def raise_sample_error(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch, or the SampleError of a sample that failed in a DataLoader worker (raised here, in
    the main process, as one line naming the record)."""
    if "error" in batch:
        raise SampleError(batch["error"], batch["reason"])
    return batch


class LengthGroupedSampler(Sampler[int]):
    """Shuffled mega-batches, each sorted by length, so batches pad little but stay random."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.mega = max(batch_size * mega_batch_mult, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        out: list[int] = []
        for start in range(0, len(order), self.mega):
            chunk = sorted(order[start : start + self.mega], key=lambda i: -self.lengths[i])
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            rng.shuffle(batches)
            for b in batches:
                out.extend(b)
        return iter(out)


class ShuffleSampler(Sampler[int]):
    """A seeded permutation per epoch (the same order on every process and after a resume)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
