"""``pair_kl``: the library's O(k) pair-KL block functions as a stand-alone autograd function, for tests.

Training runs the same ``block_forward``/``block_backward`` inside the fused (D)BiLD function; this
wrapper lets the tests check them on hand-made value rows (hand-computed cases, padding, underflow).
"""

from __future__ import annotations

import torch

from switchkd.losses.pairs import block_backward, block_forward, prepare, row_blocks
from switchkd.losses.rows import compute_dtype


class _PairKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p_values, q_values, valid, temperature):
        dtype = compute_dtype(p_values)
        out = torch.empty(p_values.shape[0], dtype=dtype, device=p_values.device)
        log_z_q = torch.empty_like(out, dtype=torch.float64)
        for rows in row_blocks(*p_values.shape):
            a = prepare(p_values[rows], valid[rows], temperature, dtype)
            b = prepare(q_values[rows], valid[rows], temperature, dtype)
            out[rows], log_z_q[rows] = block_forward(a, b, valid[rows].to(dtype))
        ctx.temperature = temperature
        ctx.save_for_backward(p_values, q_values, valid, out, log_z_q)
        return out.to(p_values.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        p_values, q_values, valid, kl, log_z_q = ctx.saved_tensors
        want_p, want_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        tau, dtype = ctx.temperature, kl.dtype
        grad_p = torch.zeros_like(p_values) if want_p else None
        grad_q = torch.zeros_like(q_values) if want_q else None
        for rows in row_blocks(*p_values.shape):
            a, b = prepare(p_values[rows], valid[rows], tau, dtype), prepare(q_values[rows], valid[rows], tau, dtype)
            ga, gb = block_backward(
                a,
                b,
                valid[rows].to(dtype),
                kl=kl[rows],
                log_z_q=log_z_q[rows],
                grad=grad_out[rows] / tau,
                want_p=want_p,
                want_q=want_q,
            )
            if want_p:
                grad_p[rows] = ga
            if want_q:
                grad_q[rows] = gb
        return grad_p, grad_q, None, None


def pair_kl(p_values: torch.Tensor, q_values: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``KL(P || Q)``; P from ``p_values``, Q from ``q_values``, both (N, K) in led order.

    ``valid`` (N, K) marks each row's first k entries (k >= 2). Returns (N,).
    """
    if p_values.shape != q_values.shape or p_values.shape != valid.shape:
        raise ValueError(
            f"pair_kl: shapes differ: {tuple(p_values.shape)}, {tuple(q_values.shape)}, {tuple(valid.shape)}"
        )
    if p_values.shape[1] == 0:  # no rows at all (k >= 2 otherwise): keep the graph, return (N,) zeros
        return (p_values + q_values).sum(-1)
    if valid.shape[0] and not bool((valid[:, 0] & (valid[:, 1:] <= valid[:, :-1]).all(-1)).all()):
        raise ValueError("pair_kl: valid must mark a non-empty prefix of each row (its first k entries)")
    return _PairKL.apply(p_values, q_values, valid, temperature)
