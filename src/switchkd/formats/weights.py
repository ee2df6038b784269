"""Another format's weights, mapped onto a switchkd model by name.

A layout is an ordered list of renaming rules (a regular expression over the source name and its
replacement). Import reads only the names and shapes of a checkpoint first, maps every name, and
refuses with one line listing every source name no rule maps, every parameter of ours nothing fills
and every shape that disagrees, before a single tensor is copied::

    model = import_weights(folder, model_cfg, LAYOUT, out_dir)   # FormatError listing what did not map
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open


class FormatError(ValueError):
    """A folder that is not in the format it was read as; the message names the folder."""


@dataclass(frozen=True)
class Tensor:
    """Where one checkpoint tensor lives, and its shape, known without reading it."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    """None for dtypes a model is never built in (integers, booleans)."""


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's files: those its index names when it is sharded, else the usual single file,
    else every ``*.safetensors`` / ``pytorch_model*.bin`` there."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():
            weight_map = read_json(folder / index_name).get("weight_map")
            if not isinstance(weight_map, dict):
                raise FormatError(f"{folder / index_name}: no weight_map")
            files = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FormatError(f"{folder / index_name}: names missing shards {missing}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FormatError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return files


def checkpoint_index(folder: Path) -> dict[str, Tensor]:
    """Names, shapes and dtypes of the tensors in ``folder`` (safetensors or ``pytorch_model.bin``,
    single or sharded), read without loading the tensors or unpickling code."""
    out = {}
    for file in _weight_files(folder):
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), "pt") as f:
                    for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                        piece = f.get_slice(name)
                        dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                        out[name] = Tensor(file, tuple(piece.get_shape()), dtype)
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise FormatError(f"{file}: not a readable safetensors file ({exc})") from None
        else:
            for name, value in _load_bin(file).items():
                out[name] = Tensor(file, tuple(value.shape), value.dtype)
    return out


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # files from torch < 1.6 cannot be memory-mapped
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle with code in it, or a damaged file
        raise FormatError(f"{file}: not a plain tensor checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{file}: expected a flat dict of tensors (a state dict)")
    return state


@dataclass(frozen=True)
class Rule:
    """``pattern`` matches a whole source name; ``target`` is its name here (``re`` replacement)."""

    pattern: str
    target: str

    def apply(self, name: str) -> str | None:
        match = re.fullmatch(self.pattern, name)
        return match.expand(self.target) if match else None


def compact(names: Iterable[str]) -> str:
    """Names with their numbers folded: ``llm.model.layers.{0-27}.mlp.up_proj.weight`` stands for 28."""
    groups: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for name in names:
        parts = name.split(".")
        numbers = tuple(int(p) for p in parts if p.isdigit())
        template = ".".join("{}" if p.isdigit() else p for p in parts)
        groups[template].append(numbers)
    out = []
    for template, rows in sorted(groups.items()):
        columns = [sorted({row[i] for row in rows}) for i in range(template.count("{}"))]
        label = template.format(*(_ranges(c) for c in columns))
        out.append(label if len(rows) == 1 else f"{label} ({len(rows)})")
    return ", ".join(out)


def _ranges(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    spans, start, prev = [], values[0], values[0]
    for value in values[1:]:
        if value != prev + 1:
            spans.append(f"{start}-{prev}" if prev > start else str(start))
            start = value
        prev = value
    spans.append(f"{start}-{prev}" if prev > start else str(start))
    return "{" + ",".join(spans) + "}"


def map_names(
    folder: Path,
    index: dict[str, Tensor],
    rules: Sequence[Rule],
    expected: dict[str, torch.Size],
    *,
    optional: Iterable[str] = (),
    ignore: Sequence[str] = (),
) -> dict[str, str]:
    """``{our name: source name}`` for every tensor of ``index``, or one FormatError naming the folder
    and listing every unmapped source name, every parameter of ours left without a value (except
    ``optional`` ones) and every shape mismatch. Source names matching an ``ignore`` pattern are dropped
    on purpose (buffers a format saves that we recompute)."""
    plan: dict[str, str] = {}
    unmatched, unknown, clashes = [], [], []
    for name in index:
        if any(re.fullmatch(p, name) for p in ignore):
            continue
        ours = next((t for t in (r.apply(name) for r in rules) if t is not None), None)
        if ours is None:
            unmatched.append(name)
        elif ours not in expected:
            unknown.append((name, ours))
        elif ours in plan:
            clashes.append(f"{plan[ours]} and {name} -> {ours}")
        else:
            plan[ours] = name
    optional = set(optional)
    missing = [k for k in expected if k not in plan and k not in optional]
    shapes = [
        f"{src} {list(index[src].shape)} vs {ours} {list(expected[ours])}"
        for ours, src in plan.items()
        if tuple(index[src].shape) != tuple(expected[ours])
    ]
    parts = []
    if unmatched:
        parts.append(f"no rule maps {len(unmatched)}: {compact(unmatched)}")
    if unknown:
        sources, ours = [s for s, _ in unknown], [o for _, o in unknown]
        read_as = f" (read as {compact(ours)})" if sources != ours else ""
        parts.append(f"{len(unknown)} map to no parameter of ours: {compact(sources)}{read_as}")
    if clashes:
        parts.append(f"{len(clashes)} map to one parameter: {', '.join(clashes)}")
    if missing:
        parts.append(f"nothing fills {len(missing)}: {compact(missing)}")
    if shapes:
        parts.append(f"{len(shapes)} shapes differ: {', '.join(shapes)}")
    if parts:
        raise FormatError(f"{folder}: not the expected layout; " + "; ".join(parts))
    return plan


def read_tensor(index: dict[str, Tensor], name: str) -> torch.Tensor:
    file = index[name].file
    if file.suffix == ".safetensors":
        with safe_open(str(file), "pt") as f:
            return f.get_tensor(name)
    return _load_bin(file)[name]


def load_mapped(model: torch.nn.Module, index: dict[str, Tensor], plan: dict[str, str]) -> None:
    """Copy every mapped tensor into ``model`` (in the model's dtypes), one file open at a time."""
    params = model.state_dict()
    by_file: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for ours, src in plan.items():
        by_file[index[src].file].append((ours, src))
    with torch.no_grad():
        for file, pairs in by_file.items():
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as f:
                    for ours, src in pairs:
                        params[ours].copy_(f.get_tensor(src))
            else:
                tensors = _load_bin(file)
                for ours, src in pairs:
                    params[ours].copy_(tensors[src])


def import_weights(
    folder: Path,
    model_cfg,
    layout: Sequence[Rule],
    out_dir: str | Path | None,
    *,
    ignore: Sequence[str] = (),
    vision_from_folder: bool = False,
):
    """A ``VisionLanguageModel`` of ``model_cfg`` filled from the checkpoint in ``folder`` through
    ``layout``, saved to ``out_dir`` (when given) and returned.

    Every name and shape is checked against the model built on the meta device first, so a wrong
    config or layout costs no memory and ends in one error. The model is built in the checkpoint's
    dtype. With ``vision_from_folder`` (``model_cfg.vision`` a folder) the vision tower may be absent
    from the checkpoint and keeps the folder's weights (a frozen tower MobileVLM does not save); where
    the checkpoint holds it, the checkpoint's weights win. A tied LM head must equal the embedding
    where the checkpoint holds both."""
    import dataclasses

    from switchkd.models import VisionLanguageModel

    index = checkpoint_index(folder)
    from transformers import AutoConfig

    from switchkd.models.vision import encoder_config

    vision, llm = (
        _config_dict(model_cfg.vision, encoder_config),
        _config_dict(model_cfg.llm, AutoConfig.from_pretrained),
    )
    shaped = dataclasses.replace(model_cfg, vision=vision, llm=llm)
    with torch.device("meta"):
        meta = VisionLanguageModel.from_config(shaped, fresh_weights=False)
    shapes = {k: v.shape for k, v in meta.state_dict().items()}
    head, embed = "llm.lm_head.weight", "llm.model.embed_tokens.weight"
    tied = meta.lm_head.weight is meta.llm.get_input_embeddings().weight
    optional = [head] if tied else []
    if vision_from_folder:
        if not isinstance(model_cfg.vision, str):
            raise ValueError("vision_from_folder needs model_cfg.vision to be a folder")
        optional += [k for k in shapes if k.startswith("vision_tower.")]
    plan = map_names(folder, index, layout, shapes, optional=optional, ignore=ignore)
    dtype = index[plan[embed]].dtype if embed in plan else None
    model = VisionLanguageModel.from_config(model_cfg, fresh_weights=False, dtype=dtype)
    load_mapped(model, index, {k: v for k, v in plan.items() if not (tied and k == head)})
    if tied and head in plan:
        stored = read_tensor(index, plan[head]).to(model.lm_head.weight.dtype)
        if not torch.equal(stored, model.lm_head.weight):
            raise FormatError(
                f"{folder}: the config ties the LM head to the embeddings, but {plan[head]} differs from them"
            )
    model.eval()
    model.config = dataclasses.replace(model.config, tokenizer=None, image_processor=None)
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model


def _config_dict(source: str | dict, read) -> dict:
    """A component's config as a dict (``read`` loads a folder's), so the model can be built on the meta
    device from configs alone."""
    return source if isinstance(source, dict) else read(source).to_dict()


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or a FormatError naming the file."""
    if not path.is_file():
        raise FormatError(f"{path.parent}: no {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
