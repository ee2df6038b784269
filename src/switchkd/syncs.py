"""Host synchronisations: where the loss path may not have them, and a counter that finds them.

A GPU runs ahead of Python until something needs a value on the host (``.item()``, a ``bool`` of a
tensor, a shape that depends on the data: ``nonzero``, boolean indexing, ``bincount``, ...); then the
host waits for the device. The loss head's per-chunk path avoids them on every accelerator
(``sync_free``). On the CPU, where nothing runs ahead, the faster data-dependent path is taken (the
pruned knee, float32 pair sums with an underflow check); ``gpu_path()`` forces the accelerator's path
there, so that ``SyncCounter`` (a ``TorchDispatchMode``, it sees every aten call) can audit it on CPU:

    with gpu_path(), SyncCounter() as syncs:
        train_step(run, batches)
    print(syncs.table())
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result (a Python scalar, or an output size) needs the data on the host
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), bool(t), int(t), float(t)
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "repeat_interleave",  # with tensor repeats and no output size
        "bincount",
        "equal",
        "is_nonzero",
    }
)

# indexing with a boolean mask sizes its result (or its writes) by the mask's count: a sync
_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})

_state = threading.local()


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


_PACKAGE = str(Path(__file__).resolve().parent)


def sync_free(device: torch.device | str) -> bool:
    """Whether code on ``device`` must take the path without host synchronisations: on every
    accelerator, and while ``torch.compile`` traces it (``train.compile``: one graph, no data-dependent
    branch); on the CPU otherwise only inside ``gpu_path()``."""
    if torch.device(device).type != "cpu" or torch.compiler.is_compiling():
        return True
    return getattr(_state, "gpu_path", False)


@contextmanager
def gpu_path():
    """Inside the block, CPU tensors take the accelerator's (synchronisation-free) code paths."""
    before = getattr(_state, "gpu_path", False)
    _state.gpu_path = True
    try:
        yield
    finally:
        _state.gpu_path = before


def _call_site() -> str:
    """The innermost frame of switchkd that made the call (``losses/knee.py:32 from_order``)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("syncs.py"):
            return f"{Path(frame.filename).relative_to(_PACKAGE)}:{frame.lineno} {frame.name}"
    return "(outside switchkd)"


class SyncCounter(TorchDispatchMode):
    """Counts the data-dependent host synchronisations of the aten calls made inside it, by op and
    call site: ``counts[(op, site)]``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS or (name in _INDEX_OPS and _bool_index(args)):
            self.counts[(name if name in SYNC_OPS else f"{name} (bool mask)", _call_site())] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.counts.values())

    def table(self) -> str:
        rows = [f"| {n} | `{op}` | `{site}` |" for (op, site), n in self.counts.most_common()]
        return "\n".join(["| calls | op | call site |", "| ---: | --- | --- |", *rows])
