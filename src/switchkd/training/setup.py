"""``setup(cfg) -> Run``: the accelerator, the objective, the data, the optimizer and its schedule,
and the state a resume restores. Nothing here trains; ``trainer.train`` does."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType, set_seed
from torch.utils.data import DataLoader

from switchkd.config import Config, ConfigError, TrainConfig, save_config
from switchkd.data.dataset import Collator, LengthGroupedSampler, LlavaDataset, ShuffleSampler
from switchkd.data.records import RecordStore, require_records
from switchkd.distillation.switch import VisualSwitchDistiller
from switchkd.models import build_vlm
from switchkd.models.placement import DTYPES
from switchkd.training import sharding
from switchkd.training.checkpoint import restore_latest
from switchkd.training.lora import apply_lora
from switchkd.training.objectives import LanguageModelingObjective
from switchkd.training.outdir import claim, release, run_id_of
from switchkd.training.run import Run
from switchkd.training.stages import STAGES, apply_stage, trainable_parts

log = logging.getLogger("switchkd.train")


def setup(cfg: Config, resume: bool = False, overwrite: bool = False) -> Run:
    """Build everything a run needs. The output folder is claimed first (see ``outdir``); with
    ``resume`` the newest intact checkpoint of this run is restored."""
    accelerator = make_accelerator(cfg.train)
    out = Path(cfg.train.output_dir)
    run_id = claim(out, resume=resume, overwrite=overwrite) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    try:
        return _build_run(cfg, accelerator, run_id=run_id or run_id_of(out), resume=resume)
    except BaseException:
        if accelerator.is_main_process:
            release(out)
        raise


def _build_run(cfg: Config, accelerator: Accelerator, *, run_id: str, resume: bool) -> Run:
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        save_config(cfg, Path(cfg.train.output_dir) / "config.yaml")
    objective = build_objective(cfg, verbose=accelerator.is_main_process)
    teacher = getattr(objective, "teacher", None)
    sampler, loader = make_loader(cfg, objective.student, world=accelerator.num_processes, teacher=teacher)
    fsdp = _fsdp_here(cfg.train)
    if fsdp:  # switchkd shards the objective itself; accelerate keeps the processes and the data
        objective = sharding.shard(objective, cfg.train, accelerator.device)
        sharding.log_held(objective)
    # fused: one kernel per parameter, no temporaries the size of a parameter (the 545 MB of a Qwen2.5
    # embedding at H = 896 was the peak of a fused-head DFT step on the CPU), and 7x faster there
    optimizer = torch.optim.AdamW(param_groups(objective, cfg.train.weight_decay), lr=cfg.train.lr, fused=True)
    if fsdp:
        optimizer, loader = accelerator.prepare(optimizer, loader)
    else:
        objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    total = total_steps(cfg.train, len(loader))
    scheduler = make_scheduler(optimizer, cfg.train, total)
    run = Run(cfg, accelerator, objective, optimizer, scheduler, loader, sampler, total, run_id)
    if resume:
        restore_latest(run)
    return run


def make_accelerator(t: TrainConfig) -> Accelerator:
    kwargs = {}
    if t.distributed == "deepspeed" and torch.cuda.is_available() and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "needs the deepspeed package: pip install --no-build-isolation deepspeed", key="train.distributed"
        )
    if t.distributed == "deepspeed" and torch.cuda.is_available():
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            zero_stage=t.zero_stage, gradient_accumulation_steps=t.grad_accum, gradient_clipping=t.max_grad_norm or 0.0
        )
    elif t.distributed == "fsdp":
        sharding.check(t)
    # Without a GPU, accelerate only forms a process group (gloo) when told it runs on CPU.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=t.grad_accum,
        mixed_precision=t.mixed_precision,
        log_with="tensorboard" if t.tensorboard else None,
        project_dir=t.output_dir,
        **kwargs,
    )
    _check_sharding(t.distributed, accelerator)
    sharded = _fsdp_here(t) or accelerator.distributed_type == DistributedType.DEEPSPEED
    if t.lora.rank and sharded:
        raise ConfigError("LoRA runs on one process or DDP here (merging needs whole weights)", key="train.lora")
    if t.diagnostics_every and sharded:
        raise ConfigError(
            "needs one process or DDP: sharded parameters cannot be differentiated one term at a time",
            key="train.diagnostics_every",
        )
    return accelerator


def _fsdp_here(t: TrainConfig) -> bool:
    """Whether this run shards with FSDP2: asked for, in a process group (torchrun / accelerate launch)."""
    return t.distributed == "fsdp" and dist.is_available() and dist.is_initialized()


def _check_sharding(wanted: str, accelerator: Accelerator) -> None:
    """accelerate runs DeepSpeed on GPUs only: elsewhere it quietly falls back to DDP, which would train
    with a memory plan the user did not ask for. Several processes: an error; one: a note. FSDP without
    a process group (one process, not launched by torchrun): a note, and the run is not sharded."""
    if wanted == "fsdp" and not (dist.is_available() and dist.is_initialized()):
        log.warning("train.distributed: fsdp: one process without a process group: nothing to shard")
    if wanted != "deepspeed" or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return
    got = "DDP" if accelerator.num_processes > 1 else "a single process"
    message = (
        f"{wanted}: accelerate runs {wanted} on GPUs only, and this run ({accelerator.num_processes} "
        f"process(es) on {accelerator.device.type}) would be {got}; set train.distributed=ddp or fsdp"
    )
    if accelerator.num_processes > 1:
        raise ConfigError(message, key="train.distributed")
    log.warning("train.distributed: %s", message)


def build_objective(cfg: Config, *, verbose: bool = True) -> torch.nn.Module:
    """The student with its stage applied, wrapped in the stage's objective (LM, or the distiller)."""
    student = build_vlm(cfg.model)
    parts = trainable_parts(cfg.train.stage, cfg.train.trainable)
    counts = apply_stage(student, parts)
    if cfg.train.lora.rank:
        counts = apply_lora(student, parts, cfg.train.lora)
    if verbose:
        log.info(
            "stage %s: trainable parameters %s", cfg.train.stage, {k: f"{v / 1e6:.2f}M" for k, v in counts.items()}
        )
    if cfg.train.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    head = {
        "chunk_rows": cfg.train.loss_chunk_rows,
        "fused": cfg.train.loss_head == "fused",
        "compiled": cfg.train.compile,
    }
    if STAGES[cfg.train.stage]["teacher"]:
        teacher = build_vlm(cfg.teacher, section="teacher", dtype=teacher_dtype(cfg.train))
        return VisualSwitchDistiller(student, teacher, cfg.distill, **head)
    return LanguageModelingObjective(student, **head)


def teacher_dtype(t: TrainConfig) -> torch.dtype | None:
    """The dtype the frozen teacher is loaded in: the mixed-precision dtype unless kept in float32."""
    if t.mixed_precision == "no" or t.teacher_dtype == "float32":
        return None
    return DTYPES[t.mixed_precision]


def make_loader(
    cfg: Config, student, world: int, teacher=None
) -> tuple[LengthGroupedSampler | ShuffleSampler, DataLoader]:
    """The training data in the student's format (and the teacher's, where it reads the data otherwise),
    with a sampler that every process shares."""
    data, t = cfg.data, cfg.train
    records = require_records(RecordStore.load(data.train), data.train)
    dataset = LlavaDataset.for_model(
        records,
        data.resolved_image_root,
        student,
        teacher=teacher,
        max_length=data.max_length,
        on_error=data.on_error,
        control_tokens=data.control_tokens,
        cache=data.cache,
    )
    if data.length_grouped:
        sampler = LengthGroupedSampler(dataset.approx_lengths(), t.per_device_batch_size * world, seed=t.seed)
    else:
        sampler = ShuffleSampler(len(dataset), seed=t.seed)
    loader = DataLoader(
        dataset,
        batch_size=t.per_device_batch_size,
        sampler=sampler,
        collate_fn=Collator(student.tokenizer.pad_token_id, data.padding_side),
        num_workers=data.num_workers,
        persistent_workers=False,
    )
    return sampler, loader


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; biases and norms get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def total_steps(t: TrainConfig, micro_batches_per_epoch: int) -> int:
    per_epoch = max(math.ceil(micro_batches_per_epoch / t.grad_accum), 1)
    return t.max_steps or max(math.ceil(t.epochs * per_epoch), 1)


def make_scheduler(optimizer, t: TrainConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine decay to 0 (or constant)."""
    warmup = math.ceil(t.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        if t.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
