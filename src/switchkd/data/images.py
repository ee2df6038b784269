"""Images: loading with clear errors, padding to square with the processor's mean colour, PIL-based
Hugging Face image processors (no torchvision), and the two ways a model family reads an image
(``SquareImages``: one fixed resolution and token count; ``GridImages``: Qwen2-VL's native resolution,
patches and a grid)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, truncated, or outside the image root."""


def _pil_classes():
    # The PIL backends of transformers' processors; the default ones need torchvision.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return {
        "LlavaOnevisionImageProcessor": LlavaOnevisionImageProcessorPil,  # LLaVA-OneVision
        "LlavaOnevisionImageProcessorPil": LlavaOnevisionImageProcessorPil,
        "Qwen2VLImageProcessor": Qwen2VLImageProcessorPil,  # Qwen2-VL, Qwen2.5-VL (the Hub folders name this one)
        "Qwen2VLImageProcessorPil": Qwen2VLImageProcessorPil,
        "CLIPImageProcessor": CLIPImageProcessorPil,
        "CLIPImageProcessorPil": CLIPImageProcessorPil,
        "SiglipImageProcessor": SiglipImageProcessorPil,
        "SiglipImageProcessorPil": SiglipImageProcessorPil,
    }


def load_image_processor(folder: str | Path, **overrides):
    """The image processor saved in ``folder`` (``preprocessor_config.json``), PIL backend; ``overrides``
    replace saved settings (``min_pixels=...``)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no preprocessor_config.json in {folder}")
    kind = json.loads(path.read_text()).get("image_processor_type", "CLIPImageProcessor")
    classes = _pil_classes()
    if kind not in classes:
        raise ValueError(f"unsupported image processor {kind!r}; supported: {', '.join(sorted(classes))}")
    return classes[kind].from_pretrained(str(folder), **overrides)


def default_image_processor(model_type: str, image_size: int, **overrides):
    """A processor matching a vision config: CLIP normalisation, or SigLIP's 0.5/0.5."""
    classes = _pil_classes()
    if model_type.startswith("siglip"):
        return classes["SiglipImageProcessor"](size={"height": image_size, "width": image_size}, **overrides)
    return classes["CLIPImageProcessor"](
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **overrides
    )


def resolve_image_path(root: str | Path | None, relative: str) -> Path:
    """``root/relative``, refusing paths that escape ``root`` (``../``, absolute paths, links out) and
    paths that cannot name a file (a NUL byte, a symlink loop)."""
    if "\x00" in relative:
        raise ImageError(f"image path {relative!r} contains a NUL byte")
    if root is None:
        return Path(relative)
    try:
        root = Path(root).resolve()
        path = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:  # Python < 3.13 reports a symlink loop as RuntimeError
        raise ImageError(f"image path {relative!r} cannot be resolved: {exc}") from None
    if path != root and root not in path.parents:
        raise ImageError(f"image path {relative!r} escapes the image root {root}")
    return path


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode and convert to 8-bit RGB; any failure is an ImageError naming the file.
    Images over PIL's pixel limit (``Image.MAX_IMAGE_PIXELS``, decompression bombs) are refused."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now, so a truncated file fails here and not in a worker later
                return to_rgb(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"refusing image {path}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. PIL's own conversion clips 16-bit and float images (16-bit mid-grey 32768 becomes
    white, float 0.5 black); here 16-bit values are scaled by 255/65535 and float values are read as
    [0, 1] (as 0-255 when they go beyond 1)."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img.convert("RGB")
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    peak = values.max(initial=0.0)
    if img.mode == "F":
        scale = 255.0 if peak <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or peak > 255 else 1.0
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side symmetrically (LLaVA's ``expand2square``)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def mean_colour(processor) -> tuple[int, int, int]:
    """The padding colour; truncated like LLaVA's ``expand2square`` and transformers' LLaVA processor."""
    return tuple(int(m * 255) for m in processor.image_mean)


def preprocess_images(images: list[Image.Image], processor, pad_to_square: bool = True) -> torch.Tensor:
    """(N, 3, H, W) float pixel values ready for the vision tower."""
    if pad_to_square:
        fill = mean_colour(processor)
        images = [expand_to_square(img, fill) for img in images]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def processor_settings(processor) -> dict:
    """What decides an image processor's output (its saved settings, without the class name)."""
    return {k: v for k, v in processor.to_dict().items() if k not in ("processor_class", "_processor_class")}


class SquareImages:
    """How a LLaVA-style model reads an image: padded to a square with the mean colour (LLaVA's
    ``expand2square``; optional), resized to the processor's one resolution, ``tokens`` image tokens.
    ``read`` gives ``{"pixel_values": (3, H, W)}``."""

    def __init__(self, processor, tokens: int, pad_to_square: bool = True):
        self.processor, self.tokens, self.pad_to_square = processor, tokens, pad_to_square

    def read(self, picture: Image.Image) -> dict[str, torch.Tensor]:
        return {"pixel_values": preprocess_images([picture], self.processor, self.pad_to_square)[0]}

    def num_tokens(self, image: dict[str, torch.Tensor]) -> int:
        return self.tokens

    @property
    def approx_tokens(self) -> int:
        return self.tokens

    def settings(self) -> dict:
        return processor_settings(self.processor) | {"pad_to_square": self.pad_to_square}


class GridImages:
    """How a Qwen2-VL-family model reads an image: at its own aspect ratio, resized so its pixel count
    lies in the processor's ``[min_pixels, max_pixels]`` and its sides are multiples of
    ``patch_size * merge_size``, cut into patches. ``read`` gives ``{"pixel_values": (patches, C·T·P·P),
    "image_grid_thw": (3,)}``; the image takes ``t·h·w / merge_size²`` tokens, so the count differs per
    image (dynamic resolution)."""

    def __init__(self, processor):
        self.processor = processor
        self.merge = processor.merge_size

    def read(self, picture: Image.Image) -> dict[str, torch.Tensor]:
        out = self.processor(images=[picture], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"][0]}

    def num_tokens(self, image: dict[str, torch.Tensor]) -> int:
        return int(image["image_grid_thw"].prod()) // self.merge**2

    @property
    def approx_tokens(self) -> int:
        """A length estimate for batching: an image of 448 × 448 pixels, or the processor's bounds."""
        p = self.processor
        lo, hi = p.size.shortest_edge or 0, p.size.longest_edge or 448 * 448
        return min(max(448 * 448, lo), hi) // (p.patch_size * self.merge) ** 2

    @property
    def max_tokens(self) -> int:
        """The most tokens an image can take (one of ``max_pixels``)."""
        return (self.processor.size.longest_edge or 0) // (self.processor.patch_size * self.merge) ** 2

    @property
    def max_vision_tokens(self) -> int:
        """The patches of the largest image (what the vision tower runs on)."""
        return self.max_tokens * self.merge**2

    def settings(self) -> dict:
        return processor_settings(self.processor)


class CropImages:
    """How a LLaVA-OneVision model reads an image ("anyres"): the whole picture as one crop of
    ``crop_size``², plus the crops of the grid in ``grid_pinpoints`` that best fits its aspect ratio.
    ``read`` gives ``{"pixel_values": (crops, 3, S, S), "image_sizes": (2,)}`` (height, width). The image
    takes as many tokens as transformers' ``pack_image_features`` makes of its crops (padding cut away,
    pooled past ``aspect_ratio``, one newline a row); ``num_tokens`` runs that code on empty features."""

    def __init__(self, processor, *, crop_size: int, patch_size: int, grid_pinpoints, aspect_ratio: str):
        self.processor = processor
        self.crop_size, self.patch_size = crop_size, patch_size
        self.grid_pinpoints, self.aspect_ratio = [list(p) for p in grid_pinpoints], aspect_ratio

    def read(self, picture: Image.Image) -> dict[str, torch.Tensor]:
        out = self.processor(images=[picture], return_tensors="pt")
        return {"pixel_values": out["pixel_values"][0], "image_sizes": out["image_sizes"][0]}

    def crops(self, image_size) -> int:
        """How many crops an image of ``image_size`` (height, width) is read as."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        return image_size_to_num_patches(image_size, self.grid_pinpoints, self.crop_size)

    def num_tokens(self, image: dict[str, torch.Tensor]) -> int:
        from types import SimpleNamespace

        from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

        side = self.crop_size // self.patch_size
        owner = SimpleNamespace(  # what the packing reads of its model: the config
            config=SimpleNamespace(
                vision_config=SimpleNamespace(image_size=self.crop_size, patch_size=self.patch_size),
                image_grid_pinpoints=self.grid_pinpoints,
            )
        )
        empty = torch.zeros(self.crops(image["image_sizes"]), side * side, 1)
        _, lengths = LlavaOnevisionModel.pack_image_features(
            owner, [empty], image["image_sizes"][None], torch.zeros(1), self.aspect_ratio
        )
        return int(lengths[0])

    @property
    def approx_tokens(self) -> int:
        """A length estimate for batching: a 4:3 picture of 768 x 1024 pixels."""
        return self.num_tokens({"image_sizes": torch.tensor([768, 1024])})

    @property
    def max_tokens(self) -> int:
        """The most tokens an image can take (over the grid's shapes)."""
        return max(self.num_tokens({"image_sizes": torch.tensor(p)}) for p in self.grid_pinpoints)

    @property
    def max_vision_tokens(self) -> int:
        """The vision tower's tokens for the image read as the most crops."""
        return max(self.crops(p) for p in self.grid_pinpoints) * (self.crop_size // self.patch_size) ** 2

    def settings(self) -> dict:
        return processor_settings(self.processor) | {"aspect_ratio": self.aspect_ratio}


def batch_images(images: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch's images, in reading order. Fixed-size pixels are stacked (N, 3, H, W). Where each image
    carries its own shape (``image_grid_thw``: Qwen2-VL's patches; ``image_sizes``: LLaVA-OneVision's
    crops), the pixels of all images are concatenated (Qwen: (sum of patches, C·T·P·P); OneVision:
    (sum of crops, 3, H, W)) and the per-image shapes stacked (N, 3) or (N, 2)."""
    shapes = [key for key in images[0] if key != "pixel_values"]
    if not shapes:
        return {"pixel_values": torch.stack([i["pixel_values"] for i in images])}
    out = {"pixel_values": torch.cat([i["pixel_values"] for i in images])}
    return out | {key: torch.stack([i[key] for i in images]) for key in shapes}


def place_images(images: dict[str, torch.Tensor], device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A batch's images on ``device``: pixels in the model's ``dtype``, the images' shapes as they are."""
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in images.items()}
