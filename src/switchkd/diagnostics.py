"""What moves the student's vision encoder, measured without changing training: the gradient norm a
loss sends into a set of parameters, and the distance between two encoders' features.

    gradient_norm(loss, params)                      # no parameter's .grad changes
    encoder_distance(student, teacher, student_images={"pixel_values": px}, teacher_images=..., adapter=None)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def gradient_norm(loss: torch.Tensor, params: list[nn.Parameter]) -> float:
    """The L2 norm of d loss / d params over all of ``params`` (0 where the loss does not reach them),
    without touching any parameter's ``.grad``."""
    if not loss.requires_grad or not params:
        return 0.0
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))


@torch.no_grad()
def encoder_distance(
    student, teacher, *, student_images: dict, teacher_images: dict, adapter: nn.Module | None = None
) -> float | None:
    """``||A(V^S(x)) - V^T(x)|| / ||V^T(x)||``: the two vision towers' features of the same images,
    each tower reading them as its own image reader does (``{"pixel_values": ...}``, with
    ``image_grid_thw`` for grid-reading families), ``A`` the switch adapter where the pair has one
    (identity otherwise). None when the feature shapes differ (no adapter to map them)."""
    s = student.encode_vision(**student_images)
    t = teacher.encode_vision(**teacher_images)
    if adapter is not None:
        s = adapter(s)
    if s.shape != t.shape:
        return None
    return float((s.float() - t.float()).norm() / t.float().norm())
