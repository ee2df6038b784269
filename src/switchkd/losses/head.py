"""The loss head: loss sums from final hidden states and LM heads, one chunk of supervised rows at a time.

    total, sums = loss_head({"student": (hidden, lm_head)}, chunk_loss, {"ce": 1.0}, vocab=V, chunk_rows=256)

``chunk_loss(logits, rows)`` maps one chunk's logits ``{name: (m, V)}`` to named loss sums; ``total``
is ``sum(weights[name] * sums[name])`` over the whole batch. Two ways to run it, same values:

- ``fused=True`` (training's default): each chunk's logits exist only inside the forward call. The
  chunk's loss terms are differentiated at once with respect to its logits, and those gradients are
  turned into gradients of the hidden states (``g @ W``) and of the head weights (``g^T @ h``, added
  over chunks) before the next chunk starts. Backward only scales the saved gradients by the incoming
  one. No tensor with all M rows x V exists, and nothing V-wide is kept for backward (the way
  Liger-Kernel's chunked losses work, for any loss and several pathways at once). The products run a
  block of vocabulary rows at a time, so no copy of a whole head weight in the products' precision
  exists either (under bf16 autocast, 1.24 GB for Qwen2.5-3B's head in float32).
- ``fused=False``: the plain autograd graph; each chunk's logits (and what the loss saves of them)
  stay alive until backward. Works with any head module, e.g. one wrapped by an adapter.

Only the weighted ``total`` carries a gradient in the fused head; ``sums`` are detached there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from switchkd.losses.sequence import row_chunks

ChunkLoss = Callable[[dict[str, torch.Tensor], slice], dict[str, torch.Tensor]]

# Elements of one pathway's chunk of logits: (m, V) at V = 151,936 is ~128 MB of float32 on CPU (208 rows:
# in a paper-shaped DFT step 96 rows took 27.3 s, 192 rows 23.8 s, 384 rows 22.2 s, at 5.4, 5.9 and 7.0 GB
# resident peak, the plain head 13.3 GB; benchmarks/bench_step.py); ~512 MB on a GPU
# (880 rows), where wide matmuls and few kernel launches matter, and the knee's full sort of the chunk
# (values, int64 order, float64 distances: ~4 GB at this size) must still fit beside the model.
CHUNK_ELEMENTS = {"cpu": 1 << 25, "cuda": 1 << 27}


def auto_chunk_rows(vocab: int, device: torch.device | str) -> int:
    """Rows per chunk for ``device``: a multiple of 16, at least 16."""
    budget = CHUNK_ELEMENTS.get(torch.device(device).type, CHUNK_ELEMENTS["cuda"])
    return max(16, budget // max(vocab, 1) // 16 * 16)


def fusable(head: nn.Module) -> bool:
    """Whether the fused head can read ``head`` as a weight (and bias): a plain ``nn.Linear`` whose
    output no hook changes. Anything else (an adapter-wrapped head) runs as a module, unfused."""
    return type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks


def loss_head(
    pathways: dict[str, tuple[torch.Tensor, nn.Module]],
    chunk_loss: ChunkLoss,
    weights: dict[str, float],
    *,
    vocab: int,
    chunk_rows: int | None,
    fused: bool = True,
    compiled: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, sums)`` over all rows. ``pathways``: name -> (hidden (M, H), LM head); logits are the
    head's first ``vocab`` columns. ``chunk_rows``: rows per chunk (None: per device for the fused
    head, all rows at once for the plain one). ``compiled``: the fused head's per-chunk loss runs
    under ``torch.compile`` (``compiled_chunk_program``). Falls back to the plain graph for a head
    that is not ``fusable``."""
    first = next(iter(pathways.values()))[0]
    num_rows = first.shape[0]
    if fused and all(fusable(head) for _, head in pathways.values()):
        if chunk_rows is None:
            chunk_rows = auto_chunk_rows(vocab, first.device)
        chunks = row_chunks(num_rows, chunk_rows)
        return _fused(pathways, chunk_loss, weights, vocab=vocab, chunks=chunks, compiled=compiled)
    operand = _matmul_dtype(first)
    logit = logits_dtype(operand)
    with torch.autocast(first.device.type, enabled=False), exact_products(operand, first.device):
        heads = {name: _plain_head(head, operand, logit, vocab) for name, (_, head) in pathways.items()}
        sums: dict[str, torch.Tensor] = {}
        for rows in row_chunks(num_rows, chunk_rows):
            logits = {name: heads[name](hidden[rows]) for name, (hidden, _) in pathways.items()}
            _add(sums, chunk_loss(logits, rows))
    return _weighted(sums, weights), sums


def logits_dtype(operand: torch.dtype) -> torch.dtype:
    """The precision of the logits: float32 from half-precision operands, float64 from float64. The
    pair differences between top-k logits are what DBiLD learns from, and bf16 logits lose them (the
    Align gradient was 8.5 % off float64 math on the same bf16 operands; in float32, 0.2 %)."""
    return torch.float64 if operand == torch.float64 else torch.float32


@contextmanager
def exact_products(operand: torch.dtype, device: torch.device):
    """Float32 products of half-precision-valued operands at the hardware's half-precision rate, with
    float32 accumulation and output. On CUDA they run on TF32 tensor cores: TF32 holds every bf16 and
    fp16 value exactly. On a CPU, bf16 operands go through oneDNN's bf16 math mode (AMX / AVX512-BF16
    where the CPU has them): every bf16 value is exact in it. So a product of two such operands is what
    a bf16 GEMM with a float32 output gives, and only the float32 accumulation rounds. A float32 operand
    that is not half-precision-valued (the logits' gradient in the fused head's backward products) is
    rounded to TF32 / bf16 on the way in, as autocast's cast of the gradient would round it. Elsewhere
    (float32 or float64 operands, fp16 on a CPU) nothing changes."""
    flags = _product_flags(operand, device)
    before = [(owner, name, getattr(owner, name)) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in before:
            setattr(owner, name, value)


def _product_flags(operand: torch.dtype, device: torch.device) -> list[tuple[object, str, object]]:
    """(settings object, attribute, value) that ``exact_products`` sets; none where nothing changes."""
    if device.type == "cuda" and operand in (torch.bfloat16, torch.float16):
        matmul = torch.backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):
            return [(matmul, "fp32_precision", "tf32")]
        return [(matmul, "allow_tf32", True)]  # torch < 2.9 has only allow_tf32
    if device.type == "cpu" and operand == torch.bfloat16 and torch.backends.mkldnn.is_available():
        matmul = getattr(torch.backends.mkldnn, "matmul", None)  # torch >= 2.9; before: plain float32
        if matmul is not None and hasattr(matmul, "fp32_precision"):
            return [(matmul, "fp32_precision", "bf16")]
    return []


def _rounded(x: torch.Tensor, operand: torch.dtype, logit: torch.dtype) -> torch.Tensor:
    """``x``'s values as the ``operand`` precision holds them, in the ``logit`` precision (no copy when
    both are ``x``'s dtype); differentiable."""
    return x.to(operand).to(logit)


def _plain_head(head: nn.Module, operand: torch.dtype, logit: torch.dtype, vocab: int):
    """hidden -> logits (m, vocab) in the logits' precision, in the autograd graph. A plain linear head
    multiplies its rounded operands in that precision (weights rounded once per call); any other head
    runs as a module in its own precision, its output cast up."""
    if not fusable(head):
        return lambda h: head(h)[..., :vocab].to(logit)
    weight = _rounded(head.weight[:vocab], operand, logit)
    bias = None if head.bias is None else _rounded(head.bias[:vocab], operand, logit)
    return lambda h: F.linear(_rounded(h, operand, logit), weight, bias)


def _add(sums: dict[str, torch.Tensor], more: dict[str, torch.Tensor]) -> None:
    for key, value in more.items():
        sums[key] = sums[key] + value if key in sums else value


def _weighted(sums: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    terms = [weights[key] * sums[key] for key in weights if key in sums and weights[key]]
    if not terms:
        return next(iter(sums.values())) * 0.0 if sums else torch.zeros(())
    return torch.stack(terms).sum() if len(terms) > 1 else terms[0]


def _fused(pathways, chunk_loss, weights, *, vocab, chunks, compiled=False):
    flat: list[torch.Tensor | None] = []
    for hidden, head in pathways.values():
        flat += [hidden, head.weight, head.bias]
    plan = _Plan(
        names=tuple(pathways),
        chunk_loss=chunk_loss,
        weights=weights,
        vocab=vocab,
        chunks=tuple(chunks),
        compiled=compiled,
    )
    total, stacked, keys = _FusedHead.apply(plan, *flat)
    return total, {key: value.to(dtype) for (key, dtype), value in zip(keys, stacked.unbind())}


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """What the fused function needs besides tensors: the pathways' names (in ``flat``'s order), the
    chunk loss and its weights, the vocabulary width and the row chunks."""

    names: tuple[str, ...]
    chunk_loss: ChunkLoss
    weights: dict[str, float]
    vocab: int
    chunks: tuple[slice, ...]
    compiled: bool = False


def _chunk_program(chunk_loss: ChunkLoss, weights: dict[str, float], logits: dict, start: int, stop: int):
    """One chunk's loss sums and their weighted total from its logits: what ``train.compile`` compiles.
    The rows come as two ints (not a slice) so that the compiled graph takes them as sizes."""
    chunk = chunk_loss(logits, slice(start, stop))
    return chunk, _weighted(chunk, weights)


_compiled: list = []


def compiled_chunk_program():
    """``_chunk_program`` under ``torch.compile(fullgraph=True)``: logits -> knee -> pairs / KL -> the
    weighted total, one graph, its backward compiled by AOTAutograd. Made on first use and kept (a new
    closure per step would compile again). A graph break is an error, not a silent fallback."""
    if not _compiled:
        _compiled.append(torch.compile(_chunk_program, fullgraph=True))
    return _compiled[0]


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer would compute in here: the autocast dtype inside autocast."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


# Elements of one block of a head weight's rows (a slice of the vocabulary) that the fused head multiplies
# at a time. Its copy in the products' precision (e.g. bf16-rounded float32) exists per block, never for
# the whole weight (1.24 GB for Qwen2.5-3B's head in float32), and it stays in cache while every product
# of the chunk that reads it runs.
BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def block_rows(width: int, device: torch.device | str) -> int:
    """Vocabulary rows per block of a head weight ``width`` wide on ``device``: at least 1."""
    budget = BLOCK_ELEMENTS.get(torch.device(device).type, BLOCK_ELEMENTS["cuda"])
    return max(1, budget // max(width, 1))


@dataclass(frozen=True, kw_only=True)
class _SharedHead:
    """One head weight (and bias) and the pathways that read it (``members``, indices into the fused
    head's inputs: the teacher's head serves the teacher and the switch). Its products run a block of
    vocabulary rows at a time, each block as the ``operand`` precision holds it, in ``dtype`` (no copy
    when those are the weight's dtype), rounded once a pass for every product that reads it."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    members: tuple[int, ...]
    vocab: int
    operand: torch.dtype
    dtype: torch.dtype

    def blocks(self, *, bias: bool):
        """``(start, stop, weight rows, bias rows or None)`` over the first ``vocab`` rows."""
        step = block_rows(self.weight.shape[1], self.weight.device)
        for start in range(0, self.vocab, step):
            stop = min(start + step, self.vocab)
            b = None if self.bias is None or not bias else _rounded(self.bias[start:stop], self.operand, self.dtype)
            yield start, stop, _rounded(self.weight[start:stop], self.operand, self.dtype), b

    def logits(self, h_mm: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each member's logits (m, vocab) from its rows of ``h_mm``: one product over the stacked rows.
        Each result is its own leaf tensor."""
        hidden = [h_mm[j] for j in self.members]
        h = hidden[0] if len(hidden) == 1 else torch.cat(hidden)
        z = h.new_empty(h.shape[0], self.vocab, dtype=self.dtype)
        for start, stop, w, b in self.blocks(bias=True):
            z[:, start:stop] = F.linear(h, w, b)
        return {j: part.detach() for j, part in zip(self.members, z.split([x.shape[0] for x in hidden]))}

    def backward(self, g: dict[int, torch.Tensor], h_mm: list[torch.Tensor], grads: tuple[list, list, list], rows):
        """For each member with a logit gradient in ``g``: the chunk's ``g @ W`` into its hidden states'
        gradient at ``rows`` (summed over blocks in the products' precision, stored once) and ``g^T h``
        into its weight's (added in place, in that gradient's dtype), a block at a time; the bias
        gradient is ``g``'s column sum. ``grads``: the (hidden, weight, bias) gradient lists."""
        grad_h, grad_w, grad_b = grads
        graded = [j for j in self.members if j in g]
        if not graded:  # a head whose rows get no gradient (the teacher's, without the switch): no second pass
            return
        acc = {j: h_mm[j].new_zeros(h_mm[j].shape) for j in graded if grad_h[j] is not None}
        for start, stop, w, _ in self.blocks(bias=False):
            for j in graded:
                g_block, gw = g[j][:, start:stop], grad_w[j]
                if j in acc:
                    acc[j].addmm_(g_block, w)
                if gw is not None and gw.dtype == self.dtype:
                    gw[start:stop].addmm_(g_block.T, h_mm[j])
                elif gw is not None:  # half-precision weights that train (no master copy): a block's temporary
                    gw[start:stop] += (g_block.T @ h_mm[j]).to(gw.dtype)
        for j in graded:
            if j in acc:
                grad_h[j][rows] = acc[j]
            if grad_b[j] is not None:
                grad_b[j][: self.vocab] += g[j].sum(0).to(grad_b[j].dtype)


class _FusedHead(torch.autograd.Function):
    """``(weighted total, detached sums stacked, their (name, dtype) keys)`` from ``(hidden, weight,
    bias)`` per pathway; the gradients of the total are computed chunk by chunk in forward, kept on
    ``ctx`` and only scaled in backward.

    Per chunk of rows: the logits of the pathways that share a head weight (the teacher's head serves
    the teacher and the switch) come from one product over their stacked rows; the products run a
    block of vocabulary rows at a time (``_SharedHead``), in two passes over each weight's blocks, each
    block rounded to the operands' precision once a pass for every product that reads it: first the logits,
    then (after the chunk's loss and its gradient ``g``) ``g @ W`` into the hidden states' gradients and
    ``g^T h`` into the weight's, added block by block."""

    @staticmethod
    def forward(ctx, plan: _Plan, *flat):
        n = len(plan.names)
        hidden, weight, bias = flat[0::3], flat[1::3], flat[2::3]
        wants = ctx.needs_input_grad[1:]  # per flat input, laid out like ``flat``
        want_h, want_w, want_b = wants[0::3], wants[1::3], wants[2::3]
        operand = _matmul_dtype(hidden[0])
        dtype = logits_dtype(operand)  # the logits', their gradients' and the products' precision
        device = hidden[0].device
        members: dict[tuple[int, int], list[int]] = {}  # pathways by head (weight and bias), in order
        for i, (w, b) in enumerate(zip(weight, bias)):
            members.setdefault((id(w), id(b)), []).append(i)
        precision = {"vocab": plan.vocab, "operand": operand, "dtype": dtype}
        heads = [
            _SharedHead(weight=weight[m[0]], bias=bias[m[0]], members=tuple(m), **precision) for m in members.values()
        ]
        with torch.autocast(device.type, enabled=False), exact_products(operand, device):
            grad_h = [torch.zeros_like(h) if want else None for h, want in zip(hidden, want_h)]
            grad_w = [torch.zeros_like(w) if want else None for w, want in zip(weight, want_w)]
            grad_b = [torch.zeros_like(b) if want else None for b, want in zip(bias, want_b)]
            sums: dict[str, torch.Tensor] = {}
            for rows in plan.chunks:
                h_mm = [_rounded(h[rows], operand, dtype) for h in hidden]
                z = {j: part for head in heads for j, part in head.logits(h_mm).items()}
                with torch.enable_grad():
                    logits = {}
                    for i, name in enumerate(plan.names):
                        logits[name] = z[i].requires_grad_(want_h[i] or want_w[i] or want_b[i])
                    program = compiled_chunk_program() if plan.compiled else _chunk_program
                    chunk, total = program(plan.chunk_loss, plan.weights, logits, rows.start, rows.stop)
                    graded = [i for i, name in enumerate(plan.names) if logits[name].requires_grad]
                    if total.requires_grad and graded:
                        grads = torch.autograd.grad(total, [logits[plan.names[i]] for i in graded], allow_unused=True)
                    else:
                        grads = [None] * len(graded)
                _add(sums, {key: value.detach() for key, value in chunk.items()})
                g = {i: gi.to(dtype) for i, gi in zip(graded, grads) if gi is not None}  # (m, V) each
                del logits, z, chunk, total, grads
                for head in heads:
                    head.backward(g, h_mm, (grad_h, grad_w, grad_b), rows)
        keys = tuple((key, value.dtype) for key, value in sums.items())
        ctx.grads = [g for i in range(n) for g in (grad_h[i], grad_w[i], grad_b[i])]
        ctx.used = False
        total = _weighted(sums, plan.weights).detach()
        # float64 holds both the loss sums and the knee sizes' integer sums exactly
        stacked = torch.stack([value.double() for value in sums.values()]) if sums else total.new_zeros(0)
        ctx.mark_non_differentiable(stacked)
        return total, stacked, keys

    @staticmethod
    def backward(ctx, grad_total, _grad_sums, _grad_keys=None):
        if ctx.used:
            raise RuntimeError("the fused loss head supports one backward pass per forward (no retain_graph reuse)")
        ctx.used = True
        out = []
        for g in ctx.grads:  # scaled in place: these buffers are the gradients, nothing else holds them
            out.append(None if g is None else g.mul_(grad_total.to(g.dtype)))
        ctx.grads = None
        return (None, *out)
