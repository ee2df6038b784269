"""KL between two pair distributions over the upper triangle, in O(k) time and memory.

For one row of k values in led order, ``P_mn = exp(A_m - A_n) / Z`` over pairs ``m < n`` (with
``A = a / tau``) is separable, so with exclusive log-cumsums
``L_n = logsumexp_{m<n} A_m`` and ``R_m = logsumexp_{n>m} -A_n``:

    log Z_P = logsumexp_n(-A_n + L_n)
    r_m = sum_{n>m} P_mn = exp(A_m + R_m - log Z_P)        (row mass)
    c_n = sum_{m<n} P_mn = exp(-A_n + L_n - log Z_P)       (column mass)
    KL(P || Q) = sum_m u_m r_m - sum_n u_n c_n - log Z_P + log Z_Q,   u = A - B

No k x k tensor is built. Padded entries (beyond each row's k) are excluded with a finite sentinel
far below any real value: ``exp`` of it is exactly 0 like ``-inf``, but unlike ``-inf`` it keeps
``logcumsumexp``'s backward free of NaN.
"""

from __future__ import annotations

import torch


def _sentinel(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min / 8


def _exclusive_logcumsumexp(x: torch.Tensor, sentinel: float) -> torch.Tensor:
    """``out[:, j] = logsumexp(x[:, :j])``; the empty prefix gets the sentinel."""
    inclusive = torch.logcumsumexp(x, dim=-1)
    return torch.cat([torch.full_like(x[:, :1], sentinel), inclusive[:, :-1]], dim=-1)


def _pair_log_masses(a: torch.Tensor, valid: torch.Tensor, sentinel: float):
    """log Z, log row mass and log column mass of the pair distribution of ``a`` (already / tau)."""
    neg = (-a).masked_fill(~valid, sentinel)  # padded n must not enter R_m
    left = _exclusive_logcumsumexp(a, sentinel)  # L_n; padding sits at the end, so real n never sees it
    right = _exclusive_logcumsumexp(neg.flip(-1), sentinel).flip(-1)  # R_m
    col = (neg + left).masked_fill(~valid, sentinel)  # log of c_n * Z
    log_z = torch.logsumexp(col, dim=-1, keepdim=True)
    row = (a + right).masked_fill(~valid, sentinel)  # log of r_m * Z
    return log_z, row - log_z, col - log_z


def pair_kl(p_values: torch.Tensor, q_values: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``KL(P || Q)``; P from ``p_values``, Q from ``q_values``, both (N, K) in led order.

    ``valid`` (N, K) marks each row's first k entries. Returns (N,).
    """
    a = p_values / temperature
    b = q_values / temperature
    sentinel = _sentinel(a.dtype)
    log_zp, log_r, log_c = _pair_log_masses(a, valid, sentinel)
    log_zq, _, _ = _pair_log_masses(b, valid, sentinel)
    u = (a - b).masked_fill(~valid, 0.0)
    cross = (u * (log_r.exp() - log_c.exp())).sum(-1)
    return cross - log_zp.squeeze(-1) + log_zq.squeeze(-1)
