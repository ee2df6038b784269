"""The training engine: one loop for pt, dpt, sft and dft, on one process or many (accelerate).

    from switchkd.training import load_config, train
    result = train(load_config("configs/paper/dft_siglip_qwen2.5-0.5b_from_3b.yaml"))

    # several processes: DDP by default, or train.distributed=deepspeed (ZeRO-2) / fsdp
    accelerate launch --num_processes 8 -m switchkd train --config X.yaml

Loss normalisation: each micro-batch's loss is its sum over supervised tokens divided by the
supervised tokens of the whole optimizer step (all micro-batches, all processes), then scaled by
``grad_accum x processes`` to undo the averaging that accelerate/DDP/DeepSpeed apply, so every token
weighs the same whatever the batch layout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from switchkd.data.dataset import Collator, LengthGroupedSampler, LlavaDataset, ShuffleSampler
from switchkd.distillation.switch import VisualSwitchDistiller
from switchkd.models import build_vlm
from switchkd.training.config import Config, save_config
from switchkd.training.objectives import LanguageModelingObjective
from switchkd.training.stages import STAGES, apply_stage, trainable_parts

log = logging.getLogger("switchkd.train")

STATE_NAME = "trainer_state.json"
LOSS_KEYS = ("total", "ce", "align", "vsd")


@dataclass
class TrainResult:
    output_dir: Path
    final_model: Path
    steps: int
    history: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    t = cfg.train
    kwargs = {}
    if t.distributed == "deepspeed":
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            zero_stage=t.zero_stage, gradient_accumulation_steps=t.grad_accum,
            gradient_clipping=t.max_grad_norm or 0.0)
    elif t.distributed == "fsdp":
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(use_orig_params=True)
    # Without a GPU, accelerate only forms a process group (gloo) when told it runs on CPU.
    return Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=t.grad_accum,
                       mixed_precision=t.mixed_precision,
                       log_with="tensorboard" if t.tensorboard else None,
                       project_dir=t.output_dir, **kwargs)


def build_objective(cfg: Config):
    """The student with its stage applied, and the objective module that wraps it."""
    student = build_vlm(cfg.model)
    counts = apply_stage(student, trainable_parts(cfg.train.stage, cfg.train.trainable))
    if cfg.train.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    if STAGES[cfg.train.stage]["teacher"]:
        teacher = build_vlm(cfg.teacher)
        objective = VisualSwitchDistiller(student, teacher, cfg.distill)
    else:
        objective = LanguageModelingObjective(student)
    return student, objective, counts


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(warmup: int, total: int, kind: str):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return fn


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first (a half-written one is a .tmp folder, never listed)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_NAME).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _move_batch(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _all_skips(accelerator, skipped: Counter) -> Counter:
    """Skipped-sample counts summed over processes (each rank counts the batches it saw)."""
    if accelerator.num_processes == 1:
        return Counter(skipped)
    from accelerate.utils import gather_object

    total: Counter = Counter()
    for part in gather_object([dict(skipped)]):
        total.update(part)
    return total


def _zero_loss(module) -> torch.Tensor:
    # An all-skipped micro-batch still joins the collective backward, with zero gradients.
    return sum(p.sum() * 0.0 for p in module.parameters() if p.requires_grad)


def train(cfg: Config, resume: bool = False) -> TrainResult:
    from accelerate.utils import set_seed

    t = cfg.train
    accelerator = make_accelerator(cfg)
    set_seed(t.seed)
    out_dir = Path(t.output_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")

    student, objective, counts = build_objective(cfg)
    if accelerator.is_main_process:
        log.info("stage %s: trainable parameters %s", t.stage, {k: f"{v / 1e6:.2f}M" for k, v in counts.items()})

    if cfg.data.train is None:
        raise ValueError("data.train: give the training data file")
    dataset = LlavaDataset.for_model(cfg.data.train, cfg.data.resolved_image_root, student,
                                     max_length=cfg.data.max_length, on_error=cfg.data.on_error)
    if cfg.data.length_grouped:
        sampler = LengthGroupedSampler([dataset.approx_length(i) for i in range(len(dataset))],
                                       t.per_device_batch_size * accelerator.num_processes, seed=t.seed)
    else:
        sampler = ShuffleSampler(len(dataset), seed=t.seed)
    loader = DataLoader(dataset, batch_size=t.per_device_batch_size, sampler=sampler,
                        collate_fn=Collator(student.tokenizer.pad_token_id, cfg.data.padding_side),
                        num_workers=cfg.data.num_workers, persistent_workers=False)

    optimizer = torch.optim.AdamW(_param_groups(objective, t.weight_decay), lr=t.lr)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    if isinstance(objective_module := accelerator.unwrap_model(objective), VisualSwitchDistiller):
        objective_module.teacher.to(accelerator.device)

    micro_per_epoch = len(loader)
    steps_per_epoch = max(math.ceil(micro_per_epoch / t.grad_accum), 1)
    total_steps = t.max_steps or max(math.ceil(t.epochs * steps_per_epoch), 1)
    warmup = math.ceil(t.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total_steps, t.scheduler))
    accelerator.register_for_checkpointing(scheduler)

    step, epoch, micro_done = 0, 0, 0
    skipped: Counter = Counter()
    if resume and (found := checkpoints(out_dir)):
        latest = found[-1]
        accelerator.load_state(str(latest / "state"))
        state = json.loads((latest / STATE_NAME).read_text())
        step, epoch, micro_done = state["step"], state["epoch"], state["micro_in_epoch"]
        # the stored counts are global: one process carries them on, so they are not summed twice
        skipped = Counter(state.get("skipped", {})) if accelerator.is_main_process else Counter()
        if accelerator.is_main_process:
            log.info("resumed from %s (step %d)", latest, step)

    if t.tensorboard:
        accelerator.init_trackers("switchkd")
    history: list[dict] = []
    log_path = out_dir / "log.jsonl"
    if accelerator.is_main_process and not resume and log_path.exists():
        log_path.unlink()
    progress = None
    if t.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=f"{t.stage}", dynamic_ncols=True)

    world = accelerator.num_processes
    objective.train()
    while step < total_steps:
        sampler.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, micro_done) if micro_done else loader
        iterator = iter(epoch_loader)
        while step < total_steps:
            group = []
            for _ in range(t.grad_accum):
                batch = next(iterator, None)
                if batch is None:
                    break
                group.append(batch)
            if not group:
                break
            started = time.perf_counter()
            n_local = sum(b["num_items"] for b in group)
            n_global = accelerator.reduce(torch.tensor(n_local, device=accelerator.device, dtype=torch.long),
                                          "sum").item()
            scale = t.grad_accum * world  # undo the averaging over micro-batches and processes
            sums = Counter()
            for batch in group:
                skipped.update(batch["skipped"])
                with accelerator.accumulate(objective):
                    if batch["input_ids"] is None:
                        loss = _zero_loss(objective)
                        parts = {}
                    else:
                        parts = objective(_move_batch(batch, accelerator.device), num_items_in_batch=max(n_global, 1))
                        loss = parts["total"]
                    accelerator.backward(loss * scale)
                    for key, value in parts.items():
                        sums[key] += value.detach().float() * (1 if key in LOSS_KEYS else 1 / len(group))
                    if accelerator.sync_gradients and t.max_grad_norm:
                        accelerator.clip_grad_norm_(objective.parameters(), t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            # A short final group (end of data) still ends the step: accelerate syncs at the loader's end.
            scheduler.step()
            step += 1
            micro_done += len(group)
            record = _step_record(accelerator, sums, step, epoch, scheduler, n_global, time.perf_counter() - started,
                                  sum(b["input_ids"].shape[0] for b in group if b["input_ids"] is not None))
            history.append(record)
            if accelerator.is_main_process:
                if step % t.log_every == 0 or step == total_steps:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    if t.tensorboard:
                        accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=step)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix({k: f"{record[k]:.3f}" for k in ("loss", "ce", "align", "vsd")
                                          if k in record} | {"tok/s": f"{record['tokens_per_s']:.0f}"})
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, objective, out_dir, step, epoch, micro_done,
                                 _all_skips(accelerator, skipped), t.save_total_limit)
        if step < total_steps:  # the epoch ran out
            everywhere = _all_skips(accelerator, skipped)
            if accelerator.is_main_process and everywhere:
                log.warning("epoch %d done; skipped samples so far: %s", epoch, dict(everywhere))
            epoch += 1
            micro_done = 0
    if progress is not None:
        progress.close()
    skipped = _all_skips(accelerator, skipped)
    _save_checkpoint(accelerator, objective, out_dir, step, epoch, micro_done, skipped, t.save_total_limit)
    final = out_dir / "final"
    _save_model(accelerator, objective, final)
    if accelerator.is_main_process and skipped:
        log.warning("skipped samples: %s", dict(skipped))
    accelerator.wait_for_everyone()
    if t.tensorboard:
        accelerator.end_training()
    return TrainResult(out_dir, final, step, history, skipped)


def _step_record(accelerator, sums: Counter, step, epoch, scheduler, n_global, seconds, samples) -> dict:
    keys = sorted(sums)
    values = torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0)
    if keys:
        values = accelerator.reduce(values.to(accelerator.device), "sum")  # losses: already global means
        values = values.cpu()
        values = [float(v) / (accelerator.num_processes if k not in LOSS_KEYS else 1) for k, v in zip(keys, values)]
    record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
    for key, value in zip(keys, values):
        record["loss" if key == "total" else key] = value
    record["tokens"] = int(n_global)
    record["tokens_per_s"] = n_global / max(seconds, 1e-9)
    record["samples_per_s"] = samples * accelerator.num_processes / max(seconds, 1e-9)
    return record


def _save_model(accelerator, objective, directory: Path) -> None:
    accelerator.wait_for_everyone()
    student = accelerator.unwrap_model(objective).student
    state = accelerator.get_state_dict(objective)  # collective: gathers FSDP / DeepSpeed shards
    if accelerator.is_main_process:
        tmp = directory.with_name(f".tmp-{directory.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        student.save_pretrained(tmp, state_dict={k.removeprefix("student."): v for k, v in state.items()
                                                 if k.startswith("student.")})
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    accelerator.wait_for_everyone()


def _save_checkpoint(accelerator, objective, out_dir: Path, step, epoch, micro_done, skipped, keep) -> None:
    """Optimizer, scheduler, RNG states, model and data position, written atomically: everything
    goes to a .tmp folder that is renamed into place only when complete."""
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "epoch": epoch, "micro_in_epoch": micro_done, "skipped": dict(skipped)}
        (tmp / STATE_NAME).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep is not None:
            for old in checkpoints(out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
