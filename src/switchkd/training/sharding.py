"""``train.distributed: fsdp``: torch's FSDP2 (``fully_shard``) applied by switchkd, and its checkpoints.

    objective = shard(objective, cfg.train, device)   # after the stage is applied, before the optimizer

Every transformer block of the student and of the frozen teacher (decoder layers, vision encoder
layers: whatever transformers marks as a ``GradientCheckpointingLayer``) becomes one FSDP unit; the
objective is the root unit and holds the rest (embeddings, LM heads, norms, projectors, the switch
adapter). The teacher is a submodule of the root here, so its parameters are sharded like the
student's: it has no gradients and no optimizer state, but L_VSD's gradient flows through its gathered
layers into the student's vision tower. The same code runs over gloo on CPU processes and NCCL on GPUs.

While the root's forward and backward run, its parameters are whole on every process: the loss head
(``losses/head.py``) reads ``lm_head.weight`` as one tensor for each chunk and returns the weight's
gradient to it, and FSDP reduce-scatters that gradient into the shards after backward.

Checkpoints (``save_shards`` / ``load_shards``) are safetensors and JSON: each process writes the
local shards of the objective's weights and of the optimizer state (``model-<rank>.safetensors``,
``optimizer-<rank>.safetensors``), the main process ``shards.json`` (the world size, the global shape
of each sharded tensor, tied names) and ``optimizer.json``. Each process reads back its own pieces: a resume
uses the world size that wrote the checkpoint (the RNG states and the data position are per process).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from switchkd.config import ConfigError, TrainConfig
from switchkd.models.placement import DTYPES
from switchkd.training import optimizer_files

log = logging.getLogger("switchkd.train")

LAYOUT_NAME = "shards.json"


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def check(t: TrainConfig) -> None:
    """What FSDP2 here cannot do, refused before anything is built."""
    if t.mixed_precision == "fp16":
        raise ConfigError(
            "fsdp trains in bf16 or float32 here (fp16 would need a sharded loss scaler)", key="train.mixed_precision"
        )
    if t.fsdp_cpu_offload and not torch.cuda.is_available():
        raise ConfigError(
            "offloads GPU memory: without a GPU the parameters are already on the CPU", key="train.fsdp_cpu_offload"
        )


def shard(objective: nn.Module, t: TrainConfig, device: torch.device) -> nn.Module:
    """``objective`` with FSDP2 applied in place (see the module docstring); returns it."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    compute = DTYPES.get(t.mixed_precision)
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)
    offload = CPUOffloadPolicy() if t.fsdp_cpu_offload else OffloadPolicy()
    if hasattr(objective, "hold_teacher"):
        objective.hold_teacher()
    if device.type == "cuda" and not t.fsdp_cpu_offload:
        objective.to(device)
    options = {"mesh": mesh, "mp_policy": policy, "offload_policy": offload}
    for block in [m for m in objective.modules() if isinstance(m, GradientCheckpointingLayer)]:
        if any(True for _ in block.parameters()):
            fully_shard(block, **options)
    fully_shard(objective, **options)
    return objective


def held_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes of ``module``'s parameters this process holds, bytes of the whole parameters)."""
    local = whole = 0
    for p in module.parameters():
        whole += p.numel() * p.element_size()
        local += (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size()
    return local, whole


def log_held(objective: nn.Module) -> None:
    """One line per process: how much of the student's and the teacher's parameters it holds."""
    parts = {"student": objective.student}
    if getattr(objective, "teacher", None) is not None:
        parts["teacher"] = objective.teacher
    held = {name: held_bytes(module) for name, module in parts.items()}
    log.info(
        "fsdp: rank %d of %d holds %s",
        dist.get_rank(),
        dist.get_world_size(),
        ", ".join(f"{name} {local:,} of {whole:,} parameter bytes" for name, (local, whole) in held.items()),
    )


# ---- checkpoints ---------------------------------------------------------------------------------


def _local(value: torch.Tensor) -> torch.Tensor:
    return (value.to_local() if isinstance(value, DTensor) else value).detach().contiguous().cpu()


def _unique(named: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One entry per tensor object (tied weights are one parameter under two names) and the aliases."""
    first: dict[int, str] = {}
    kept, aliases = {}, {}
    for name, value in named.items():
        owner = first.setdefault(id(value), name)
        if owner == name:
            kept[name] = value
        else:
            aliases[name] = owner
    return kept, aliases


def save_shards(objective: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its own pieces into ``folder`` (every process calls it); the main process also
    writes the layout and the optimizer's param groups."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model, aliases = _unique(objective.state_dict(keep_vars=True))
    tensors, meta = optimizer_files.flatten(optimizer)
    save_file({k: _local(v) for k, v in model.items()}, str(folder / f"model-{rank:05d}.safetensors"))
    save_file({k: _local(v) for k, v in tensors.items()}, str(folder / f"optimizer-{rank:05d}.safetensors"))
    if rank == 0:
        sharded = {
            k: list(v.shape)
            for k, v in (model | {f"optimizer.{k}": v for k, v in tensors.items()}).items()
            if isinstance(v, DTensor)
        }
        layout = {"world_size": world, "sharded": sharded, "aliases": aliases}
        (folder / LAYOUT_NAME).write_text(json.dumps(layout))
        (folder / "optimizer.json").write_text(json.dumps(meta))


class _Pieces:
    """Reads this process's piece of each tensor of a sharded checkpoint, by name (safetensors: no code,
    no pickle); a tensor that is not sharded (a buffer, the optimizer's step) from the main process's file."""

    def __init__(self, folder: Path, prefix: str, layout: dict):
        self.sharded = layout["sharded"]
        self.prefix = prefix
        self.paths = [folder / f"{prefix}-{r:05d}.safetensors" for r in range(int(layout["world_size"]))]

    def piece(self, key: str) -> torch.Tensor:
        layout_key = key if self.prefix == "model" else f"optimizer.{key}"
        path = self.paths[dist.get_rank() if layout_key in self.sharded else 0]
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)


def _copy_into(target: torch.Tensor, source: torch.Tensor, key: str) -> None:
    local = target.to_local() if isinstance(target, DTensor) else target
    if local.shape != source.shape:
        raise ValueError(
            f"{key}: the checkpoint's piece is {list(source.shape)}, this process holds {list(local.shape)}"
        )
    with torch.no_grad():
        local.copy_(source.to(local.dtype))


def load_shards(objective: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read a checkpoint written by ``save_shards`` into the sharded ``objective`` and ``optimizer``."""
    layout = json.loads((folder / LAYOUT_NAME).read_text())
    if int(layout["world_size"]) != dist.get_world_size():  # checked before, with the RNG files; kept here too
        raise ValueError(f"written by {layout['world_size']} processes, this run has {dist.get_world_size()}")
    model, aliases = _unique(objective.state_dict(keep_vars=True))
    if aliases != layout["aliases"]:
        raise ValueError(f"tied weights differ: the checkpoint has {layout['aliases']}, this model {aliases}")
    pieces = _Pieces(folder, "model", layout)
    with safe_open(str(pieces.paths[0]), framework="pt") as f:
        saved = set(f.keys())
    if saved != set(model):
        differ = sorted(saved ^ set(model))
        raise ValueError(
            f"the checkpoint's weights are not this model's ({len(differ)} names differ, e.g. {differ[0]})"
        )
    for key, value in model.items():
        _copy_into(value, pieces.piece(key), key)
    _load_optimizer(optimizer, folder, layout)


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, layout: dict) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    pieces = _Pieces(folder, "optimizer", layout)
    with safe_open(str(pieces.paths[0]), framework="pt") as f:
        names = list(f.keys())
    tensors = {}
    for key in names:
        value, param = pieces.piece(key), params[int(key.split(".", 1)[0])]
        if f"optimizer.{key}" in layout["sharded"]:  # this process's piece of a state sharded like its parameter
            value = DTensor.from_local(
                value.to(param.device), param.device_mesh, param.placements, shape=param.shape, stride=param.stride()
            )
        tensors[key] = value
    meta = json.loads((folder / "optimizer.json").read_text())
    optimizer.load_state_dict(optimizer_files.unflatten(tensors, meta))


def gather_student(objective: nn.Module) -> dict[str, torch.Tensor]:
    """The student's whole weights on the main process (empty elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("student."): v for k, v in full.items() if k.startswith("student.")}


# ---- what a process holds, before launching -----------------------------------------------------


def _largest_piece(p: torch.Tensor, processes: int) -> int:
    """Elements of rank 0's piece of ``p`` (``torch.chunk`` along dim 0: the first piece is the largest)."""
    if p.ndim == 0:
        return 1
    rows = -(-p.shape[0] // processes)
    return min(rows, p.shape[0]) * (p.numel() // max(p.shape[0], 1))


def units(model: nn.Module) -> tuple[int, int]:
    """(parameters outside every block: the root unit's share, parameters of the largest block)."""
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
    return root, max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)


def process_share(student: nn.Module, teacher: nn.Module | None, t: TrainConfig, processes: int) -> dict[str, int]:
    """Bytes that rank 0 of ``processes`` FSDP2 processes holds (its pieces are the largest): the
    student's float32 parameters, gradients and AdamW state, the teacher's parameters, and what is
    gathered whole while a unit runs (the root unit, and two blocks: one running, one prefetched).
    ``student`` has its stage applied (``requires_grad``); the models may live on the meta device."""
    compute = 2 if t.mixed_precision == "bf16" else 4
    shard = {p: _largest_piece(p, processes) for p in student.parameters()}
    trained = sum(n for p, n in shard.items() if p.requires_grad)
    out = {"student parameters": 4 * sum(shard.values()), "student gradients": 4 * trained}
    out["student AdamW state"] = 8 * trained
    root, block = units(student)
    if teacher is not None:
        t_bytes = 2 if t.mixed_precision == "bf16" and t.teacher_dtype == "compute" else 4
        out["teacher parameters"] = t_bytes * sum(_largest_piece(p, processes) for p in teacher.parameters())
        t_root, t_block = units(teacher)
        root, block = root + t_root, max(block, t_block)
    out["gathered: root unit"] = compute * root
    out["gathered: two blocks"] = 2 * compute * block
    return out


def _size(n: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def describe_share(share: dict[str, int], t: TrainConfig, processes: int) -> str:
    """``process_share`` in words: what each process keeps, and what it gathers while a unit runs."""
    teacher = "bf16" if t.mixed_precision == "bf16" and t.teacher_dtype == "compute" else "float32"
    lines = [
        f"fsdp over {processes} processes, per process (rank 0, the largest pieces): "
        f"{_size(sum(v for k, v in share.items() if not k.startswith('gathered')))} kept",
        f"  student: parameters {_size(share['student parameters'])} (float32), gradients "
        f"{_size(share['student gradients'])}, AdamW state {_size(share['student AdamW state'])}",
    ]
    if "teacher parameters" in share:
        lines.append(f"  teacher: parameters {_size(share['teacher parameters'])} ({teacher}), no gradients or state")
    lines.append(
        f"  gathered while running ({'bf16' if t.mixed_precision == 'bf16' else 'float32'}): the root unit "
        f"(embeddings, LM heads, norms, projectors) {_size(share['gathered: root unit'])}, two blocks (one "
        f"running, one prefetched) {_size(share['gathered: two blocks'])}"
    )
    return "\n".join(lines)
