"""Where a model runs for inference, chosen once at the entry point (chat, predict, eval, attention).

device, dtype = placement("auto", "auto")   # the GPU in bf16 when there is one, else CPU in fp32
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("switchkd")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def placement(device: str | None = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """The device and dtype to load a model with. ``device``: ``auto`` (or None) is the GPU when torch
    sees one, else the CPU; ``cuda``, ``cuda:1``, ``cpu`` ... are checked against this machine.
    ``dtype``: ``auto`` is bf16 on a GPU that supports it (fp16 on one that does not) and fp32 on the
    CPU; fp16 on the CPU becomes fp32 with a warning. A device that cannot be used is a ValueError."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        log.info("device %s (%s)", device, "CUDA is available" if device == "cuda" else "no CUDA device")
    try:
        where = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device name (cpu, cuda, cuda:1, mps ...)") from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ValueError(f"--device {device}: this torch ({torch.__version__}) has {build}; use --device cpu")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    elif where.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    elif where.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: switchkd runs on cpu, cuda or mps")
    if dtype == "auto":
        if where.type == "cuda":
            return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--torch-dtype {dtype}: choose auto, {', '.join(DTYPES)}")
    if where.type == "cpu" and DTYPES[dtype] == torch.float16:
        log.warning("fp16 matmuls are slow or missing on CPU: using fp32")
        return device, torch.float32
    return device, DTYPES[dtype]
