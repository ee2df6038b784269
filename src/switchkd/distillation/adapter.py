"""The switch adapter: the student's vision features in the teacher projector's input space, for pairs
whose vision towers differ (paper §4.3.5, "adapter-based mappings").

    adapter = SwitchAdapter(in_dim=768, out_dim=1024, in_grid=27, out_grid=24, kind="linear")
    z = teacher.projector(adapter(student.vision_tower(pixels)))      # (B, 24 * 24, ...) for the teacher

Two parts, each present only when needed: a resampling of the square patch grid (bilinear
interpolation, or adaptive average pooling) and a width map (a linear layer, or LLaVA's two-layer GELU
MLP). The grid is resampled first, in the student's width. The adapter is trained by L_VSD alone (the
only term whose graph reaches it), lives in the distiller beside the student, is saved with the step
checkpoints and is not part of the exported student.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_KINDS = ("linear", "mlp2x_gelu")
RESAMPLE = ("interpolate", "pool")


def grid_side(tokens: int, who: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{who}: {tokens} vision tokens are not a square patch grid; the switch adapter needs one")
    return side


class SwitchAdapter(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        in_grid: int,
        out_grid: int,
        kind: str = "linear",
        resample: str = "interpolate",
    ):
        super().__init__()
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown switch adapter {kind!r}; valid: {', '.join(ADAPTER_KINDS)}")
        if resample not in RESAMPLE:
            raise ValueError(f"unknown switch resampling {resample!r}; valid: {', '.join(RESAMPLE)}")
        self.in_dim, self.out_dim, self.in_grid, self.out_grid = in_dim, out_dim, in_grid, out_grid
        self.kind, self.resample = kind, resample
        if kind == "linear":
            self.map = nn.Linear(in_dim, out_dim)
        else:
            self.map = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def extra_repr(self) -> str:
        grid = f"{self.in_grid}x{self.in_grid} -> {self.out_grid}x{self.out_grid} ({self.resample}), "
        return grid + f"{self.in_dim} -> {self.out_dim} ({self.kind})"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_grid², in_dim) -> (B, out_grid², out_dim)."""
        b, n, d = features.shape
        if n != self.in_grid**2 or d != self.in_dim:
            expected = f"(B, {self.in_grid**2}, {self.in_dim})"
            raise ValueError(f"switch adapter expects {expected}, got {tuple(features.shape)}")
        if self.in_grid != self.out_grid:
            grid = features.transpose(1, 2).reshape(b, d, self.in_grid, self.in_grid)
            size = (self.out_grid, self.out_grid)
            if self.resample == "interpolate":
                grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
            else:
                grid = F.adaptive_avg_pool2d(grid, size)
            features = grid.flatten(2).transpose(1, 2)
        return self.map(features)
