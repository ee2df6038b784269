"""KL between two pair distributions over the upper triangle, in O(k) time and memory.

For one row of k values in led order, ``P_mn = exp(A_m - A_n) / Z`` over pairs ``m < n`` (with
``A = a / tau``) is separable. With ``alpha_m = exp(A_m - max A)``, ``beta_n = exp(min A - A_n)``,
the exclusive prefix ``Lam_n = sum_{m<n} alpha_m`` and suffix ``Rho_m = sum_{n>m} beta_n``:

    S   = sum_n beta_n Lam_n,            log Z_P = max A - min A + log S
    r_m = sum_{n>m} P_mn = alpha_m Rho_m / S          (row mass)
    c_n = sum_{m<n} P_mn = beta_n Lam_n / S           (column mass)
    KL(P || Q) = sum_m u_m r_m - sum_n u_n c_n - log Z_P + log Z_Q,   u = A - B
               = sum_n beta_n (W_n - u_n Lam_n) / S - log Z_P + log Z_Q,   W_n = sum_{m<n} alpha_m u_m

(DESIGN.md writes the same in log space: ``L_n = log Lam_n + max A`` and ``R_m = log Rho_m - min A``.)
The gradient is analytic and O(k) too; with ``C = log Z_Q - log Z_P`` and ``U_m = sum_{n>m} beta_n u_n``:

    dKL/dB_j = (r^Q_j - c^Q_j) - (r^P_j - c^P_j)
    dKL/dA_j = (u_j + C - KL) r_j - sum_{n>j} P_jn u_n - sum_{m<j} P_mj u_m + (u_j - C + KL) c_j
             = alpha_j ((u_j + C - KL) Rho_j - U_j) / S + beta_j ((u_j - C + KL) Lam_j - W_j) / S

No k x k tensor is built. Masked entries (past each row's k) get ``alpha = beta = 0`` exactly, so
they drop out of every sum and their gradient is exactly 0; their values are first replaced by the
row's first (valid) value only so that every shifted exponential stays finite and the row's max and
min are those of the valid entries. On the sorted led side the largest terms open each prefix and
close each suffix, so nothing underflows; should an unsorted side span more than the dtype's exponent
range (``S`` underflows), the block is recomputed in float64.

The block functions below serve the fused (D)BiLD function in ``bild.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from switchkd.syncs import sync_free


def prepare(values: torch.Tensor, valid: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``values / tau`` in ``dtype`` with masked entries set to the row's first (valid) value."""
    x = values.to(dtype)
    return torch.where(valid, x, x[:, :1]).div_(temperature)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = sum(x[:, :j])`` (exact zero for j = 0, no subtraction)."""
    return F.pad(torch.cumsum(x[:, :-1], dim=-1), (1, 0))


def _exclusive_suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = sum(x[:, j+1:])``."""
    return _exclusive_cumsum(x.flip(-1)).flip(-1)


class _Side:
    """One side's pair distribution over a block of rows: the shifted terms, ``S`` and log Z."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor):
        top = x.amax(dim=-1, keepdim=True)
        low = x.amin(dim=-1, keepdim=True)
        self.alpha = torch.sub(x, top).exp_().mul_(valid)
        self.beta = torch.sub(low, x).exp_().mul_(valid)
        self.lam = _exclusive_cumsum(self.alpha)
        self.s = (self.beta * self.lam).sum(dim=-1, keepdim=True)
        self.log_z = (top - low + torch.log(self.s)).squeeze(-1)

    def underflows(self) -> bool:
        return self.s.dtype != torch.float64 and bool((self.s < torch.finfo(self.s.dtype).tiny * 1e6).any())

    def row_minus_col(self) -> torch.Tensor:
        """``r - c`` per entry."""
        return (self.alpha * _exclusive_suffix_sum(self.beta) - self.beta * self.lam) / self.s


def _sides(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, need_q: bool = True):
    """P's side (and Q's, if needed) of a block in the input precision, or in float64 where a float32
    ``S`` underflows; and ``u = A - B``. On a GPU the block is always computed in float64: asking
    whether ``S`` underflowed would be a host synchronisation per block, and these sums are bound by
    memory traffic, not arithmetic."""
    if sync_free(a.device) and a.dtype != torch.float64:
        a, b, valid = a.double(), b.double(), valid.double()
    p, q = _Side(a, valid), _Side(b, valid) if need_q else None
    if p.underflows() or (q is not None and q.underflows()):
        a, b, valid = a.double(), b.double(), valid.double()
        p, q = _Side(a, valid), _Side(b, valid) if need_q else None
    return p, q, a - b


def block_forward(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``KL(P || Q)`` and ``log Z_Q`` of prepared values; ``valid`` as 0/1 in their dtype."""
    p, q, u = _sides(a, b, valid)
    kl = (p.beta * (_exclusive_cumsum(p.alpha * u) - u * p.lam)).sum(-1) / p.s.squeeze(-1) - p.log_z + q.log_z
    return kl, q.log_z


def block_backward(
    a: torch.Tensor,
    b: torch.Tensor,
    valid: torch.Tensor,
    *,
    kl: torch.Tensor,
    log_z_q: torch.Tensor,
    grad: torch.Tensor,
    want_p: bool,
    want_q: bool,
):
    """Gradients of ``grad · KL`` with respect to the prepared values ``a`` (P) and ``b`` (Q), or None."""
    p, q, u = _sides(a, b, valid, need_q=want_q)  # dA needs only P's side and the saved log Z_Q
    g = grad.to(u.dtype)[:, None]
    grad_a = grad_b = None
    if want_q:
        grad_b = g * (q.row_minus_col() - p.row_minus_col())
    if want_p:
        shift = (log_z_q.to(u.dtype) - p.log_z - kl.to(u.dtype))[:, None]  # C - KL
        after = p.alpha * ((u + shift) * _exclusive_suffix_sum(p.beta) - _exclusive_suffix_sum(p.beta * u))
        before = p.beta * ((u - shift) * p.lam - _exclusive_cumsum(p.alpha * u))
        grad_a = (g / p.s) * (after + before)
    return grad_a, grad_b


BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


def row_blocks(n_rows: int, width: int, device: torch.device | str = "cpu") -> list[slice]:
    """Blocks of rows: ~256k elements on CPU, where their temporaries stay in cache and in reused heap
    memory (fresh multi-MB tensors cost more in page faults than in arithmetic there); ~16M on a GPU,
    where fewer, larger kernels are what counts."""
    if torch.compiler.is_compiling():  # one block: the compiled graph fuses what the blocks kept in cache
        return [slice(0, n_rows)]
    budget = BLOCK_ELEMENTS.get(torch.device(device).type, BLOCK_ELEMENTS["cuda"])
    size = max(1, budget // max(width, 1))
    return [slice(i, min(i + size, n_rows)) for i in range(0, n_rows, size)]
