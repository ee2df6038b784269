"""Projectors from vision features (B, N, D_v) to LLM embeddings (B, M, D_llm), by exact name."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP2xGelu(nn.Module):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear. Keeps the token count."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_dim, f"projector expects width {self.in_dim}, got {x.shape[-1]}"
        return self.linear_2(self.act(self.linear_1(x)))


class _FeatureIR(nn.Module):
    """LDPv2 feature layer (MobileVLM V2 ``FeatureIRLayer``): Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _PosInject(nn.Module):
    """LDPv2 position injection (``PosInjectLayer``): depthwise 3x3 conv with a residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.peg(grid) + grid


class LDPv2(nn.Module):
    """MobileVLM V2's LDPNetV2: feature MLP, adaptive average pooling of the token grid to
    ``grid x grid`` tokens, depthwise conv position injection with a residual.

    Submodule names (``mlp.mlp.{0,2}``, ``peg.peg.0``) equal MobileVLM V2's ``mm_projector`` so
    released weights load with a plain prefix change.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: int = 12):
        super().__init__()
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid
        self.mlp = _FeatureIR(in_dim, out_dim)
        self.dwn = nn.AdaptiveAvgPool2d((grid, grid))
        self.peg = _PosInject(out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        self._side(num_input_tokens)
        return self.grid * self.grid

    @staticmethod
    def _side(num_tokens: int) -> int:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(
                f"ldpv2 needs a square token grid, got {num_tokens} tokens; "
                "drop the CLS token (model.drop_cls=true) or use another projector"
            )
        return side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        assert c == self.in_dim, f"ldpv2 expects width {self.in_dim}, got {c}"
        side = self._side(n)
        x = self.mlp(x)  # (B, N, D)
        x = x.transpose(1, 2).reshape(b, self.out_dim, side, side)  # (B, D, H, W)
        x = self.dwn(x)  # (B, D, grid, grid)
        x = self.peg(x)
        return x.flatten(2).transpose(1, 2)  # (B, grid*grid, D)


class IdentityProjector(nn.Module):
    """No projection: the vision width must already equal the LLM width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if in_dim != out_dim:
            raise ValueError(f"identity projector needs equal widths, got vision {in_dim} and LLM {out_dim}")
        self.in_dim = self.out_dim = in_dim

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


PROJECTORS: dict[str, type[nn.Module]] = {
    "mlp2x_gelu": MLP2xGelu,
    "ldpv2": LDPv2,
    "identity": IdentityProjector,
}


def build_projector(name: str, in_dim: int, out_dim: int, **kwargs) -> nn.Module:
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector {name!r}; valid: {', '.join(sorted(PROJECTORS))}")
    try:
        return PROJECTORS[name](in_dim, out_dim, **kwargs)
    except TypeError as exc:
        raise ValueError(f"projector {name!r}: bad arguments {kwargs}: {exc}") from None
