"""The training loop: ``train(cfg)`` runs ``train_step`` until the run's last step; one code path for
pt, dpt, sft and dft, on one process or many (accelerate).

    from switchkd.training import load_config, train
    result = train(load_config("configs/paper/dft_siglip_qwen2.5-0.5b_from_3b.yaml"))

    # several processes: DDP by default, or train.distributed=deepspeed (ZeRO-2) / fsdp
    accelerate launch --num_processes 8 -m switchkd train --config X.yaml

Reading order: ``train`` (the loop) -> ``train_step`` (one optimizer step) -> the objective
(``training/objectives.py`` or ``distillation/switch.py``) -> the loss (``losses/``). ``setup.py``
builds the ``Run``; ``checkpoint.py`` saves and restores it.

Loss normalisation: each micro-batch's loss is its sum over supervised tokens divided by the
supervised tokens of the whole optimizer step (all micro-batches, all processes), then scaled by
``grad_accum x processes`` to undo the averaging that accelerate/DDP/DeepSpeed apply, so every token
weighs the same whatever the batch layout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from switchkd.config import Config
from switchkd.data.dataset import raise_sample_error
from switchkd.training.checkpoint import save_checkpoint, save_model, skipped_everywhere
from switchkd.training.outdir import release
from switchkd.training.run import Run
from switchkd.training.setup import setup

log = logging.getLogger("switchkd.train")


def loss_keys(run: Run) -> tuple[str, ...]:
    """The step's loss values: the total and the objective's terms (``objective.terms``: ``ce`` for the
    LM objective; ``ce``, ``align``, ``vsd`` for the distiller). Every other value it returns is a
    diagnostic (knee sizes)."""
    return ("total", *run.accelerator.unwrap_model(run.objective).terms)


@dataclass
class TrainResult:
    output_dir: Path
    final_model: Path
    steps: int
    history: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train one stage from ``cfg``; with ``resume``, continue from the newest checkpoint of this run;
    with ``overwrite``, replace a run already in ``train.output_dir``."""
    run = setup(cfg, resume, overwrite)
    try:
        history = run_steps(run, fresh=not resume)
        if history and not any(h["tokens"] for h in history):
            counts = dict(skipped_everywhere(run))
            raise ValueError(f"data.train: every sample was skipped ({counts}); nothing was trained")
        skipped = save_checkpoint(run).skipped
        save_model(run, run.output_dir / "final")  # ends on a barrier: no process leaves while others still talk
    finally:
        if run.is_main:
            release(run.output_dir)
    if run.is_main and skipped:
        log.warning("skipped samples: %s", dict(skipped))
    return TrainResult(run.output_dir, run.output_dir / "final", run.state.step, history, skipped)


def run_steps(run: Run, fresh: bool) -> list[dict]:
    """The loop: optimizer steps until the run's last, epoch after epoch, checkpoints on the way."""
    history: list[dict] = []
    with StepLog(run, fresh=fresh) as step_log:
        while run.state.step < run.total_steps:
            for micro_batches in epoch_groups(run):
                diagnosed = diagnostics(run, micro_batches[0]) if _diagnostics_due(run) else {}
                history.append(train_step(run, micro_batches) | diagnosed)
                step_log.write(history[-1])
                if run.state.step == run.total_steps:
                    break
                if run.cfg.train.save_every and run.state.step % run.cfg.train.save_every == 0:
                    save_checkpoint(run)
            else:
                next_epoch(run)
    return history


def epoch_groups(run: Run) -> Iterator[list[dict]]:
    """The rest of the current epoch, ``grad_accum`` micro-batches at a time (the last group may be short)."""
    loader = run.loader
    if run.state.position:
        loader = run.accelerator.skip_first_batches(loader, run.state.position)
    # accelerate's loaders set the sampler's epoch from their own pass counter, which starts at 0 in a
    # resumed run and in every skip_first_batches loader: the epoch must come from our state. Both
    # calls are needed: under DDP a skip_first_batches loader nests our sampler deeper than its
    # set_epoch reaches (the two-process resume test fails without the second).
    loader.set_epoch(run.state.epoch)
    run.sampler.set_epoch(run.state.epoch)
    batches = map(raise_sample_error, loader)
    while group := list(itertools.islice(batches, run.cfg.train.grad_accum)):
        yield group


def next_epoch(run: Run) -> None:
    if run.state.position == 0:
        raise ValueError(f"data.train: {run.cfg.data.train} gave no batch in a whole epoch")
    skipped = skipped_everywhere(run)
    if run.is_main and skipped:
        log.warning("epoch %d done; skipped samples so far: %s", run.state.epoch, dict(skipped))
    run.state.epoch += 1
    run.state.position = 0


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device``, the teacher's view (a nested dict) included."""
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) if type(v) is dict else v
        for k, v in batch.items()
    }


def _diagnostics_due(run: Run) -> bool:
    every = run.cfg.train.diagnostics_every
    return bool(every) and (run.state.step + 1) % every == 0


def diagnostics(run: Run, batch: dict) -> dict[str, float]:
    """The objective's diagnostics (``grad_vision_<term>``, ``feature_distance``) on ``batch`` with the
    parameters the coming step starts from; the random state is restored, so training is unchanged."""
    objective = run.accelerator.unwrap_model(run.objective)
    if batch["input_ids"] is None or not hasattr(objective, "diagnostics"):
        return {}
    moved = to_device(batch, run.accelerator.device)
    devices = [run.accelerator.device] if run.accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), run.accelerator.autocast():
        return objective.diagnostics(moved)


def train_step(run: Run, micro_batches: list[dict]) -> dict:
    """One optimizer step over ``micro_batches`` (at most ``grad_accum``); returns the step's record."""
    acc = run.accelerator
    started = time.perf_counter()
    local = torch.tensor(sum(b["num_items"] for b in micro_batches), device=acc.device, dtype=torch.long)
    n_items = int(acc.reduce(local, "sum").item())  # supervised tokens of the whole step, every process
    sums: Counter = Counter()
    losses = loss_keys(run)
    for i, batch in enumerate(micro_batches):
        run.state.skipped.update(batch["skipped"])
        # The group decides where the step ends: its last micro-batch, a short final group's too. (Not
        # accelerate's ``accumulate``: the group is fetched whole before the first backward, which tells
        # accelerate's loader the epoch's end early, and ``accumulate`` then stepped after every
        # micro-batch of an epoch's last group.) ``sync_gradients`` is what accelerate's optimizer,
        # clipping and DeepSpeed's backward read; ``no_sync`` keeps DDP from reducing before the last.
        last = i == len(micro_batches) - 1
        acc.sync_gradients = last
        with contextlib.nullcontext() if last else acc.no_sync(run.objective):
            for key, value in forward_backward(run, batch, n_items).items():
                sums[key] += value.detach().float() * (1 if key in losses else 1 / len(micro_batches))
    if run.cfg.train.max_grad_norm:
        acc.clip_grad_norm_(run.objective.parameters(), run.cfg.train.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.state.step += 1
    run.state.position += len(micro_batches)
    samples = sum(b["input_ids"].shape[0] for b in micro_batches if b["input_ids"] is not None)
    return step_record(run, sums, tokens=n_items, samples=samples, seconds=time.perf_counter() - started)


def forward_backward(run: Run, batch: dict, n_items: int) -> dict[str, torch.Tensor]:
    """The objective's named losses for one micro-batch, after its backward pass."""
    acc, t = run.accelerator, run.cfg.train
    scale = t.grad_accum * acc.num_processes  # undo the averaging over micro-batches and processes
    if batch["input_ids"] is None:  # every sample skipped: still join the collective backward, with zeros
        acc.backward(sum(p.sum() * 0.0 for p in run.objective.parameters() if p.requires_grad))
        return {}
    parts = run.objective(to_device(batch, acc.device), num_items_in_batch=max(n_items, 1))
    acc.backward(parts["total"] * scale)
    return parts


def step_record(run: Run, sums: Counter, *, tokens: int, samples: int, seconds: float) -> dict:
    """Losses (global means over tokens), diagnostics (means over micro-batches and processes), speed."""
    acc, keys, losses = run.accelerator, sorted(sums), loss_keys(run)
    record = {"step": run.state.step, "epoch": run.state.epoch, "lr": run.scheduler.get_last_lr()[0]}
    if keys:
        values = acc.reduce(torch.stack([sums[k] for k in keys]).to(acc.device), "sum").cpu()
        for key, value in zip(keys, values.tolist()):
            record["loss" if key == "total" else key] = value / (1 if key in losses else acc.num_processes)
    record["tokens"] = tokens
    record["tokens_per_s"] = tokens / max(seconds, 1e-9)
    record["samples_per_s"] = samples * acc.num_processes / max(seconds, 1e-9)
    return record


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line; a torn line (a kill mid-write) counts as past every step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class StepLog:
    """Where step records go, on the main process: ``log.jsonl`` (every ``log_every`` steps and the
    last), TensorBoard when enabled, and the progress bar."""

    def __init__(self, run: Run, fresh: bool):
        self.run, t = run, run.cfg.train
        self.path = run.output_dir / "log.jsonl"
        self.progress = None
        if t.tensorboard:
            run.accelerator.init_trackers("switchkd")
        if run.is_main and self.path.exists():
            self._keep_until(0 if fresh else run.state.step)
        if run.is_main and t.progress:
            self.progress = tqdm(total=run.total_steps, initial=run.state.step, desc=t.stage, dynamic_ncols=True)

    def _keep_until(self, step: int) -> None:
        """Drop the records after ``step`` (a resumed run writes them again), or all of them."""
        kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        run, t = self.run, self.run.cfg.train
        if not run.is_main:
            return
        if record["step"] % t.log_every == 0 or record["step"] == run.total_steps:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if t.tensorboard:
                run.accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=record["step"])
        if self.progress is not None:
            self.progress.update(1)
            shown = {k: f"{record[k]:.3f}" for k in ("loss", *loss_keys(run)[1:]) if k in record}
            self.progress.set_postfix(shown | {"tok/s": f"{record['tokens_per_s']:.0f}"})

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.run.cfg.train.tensorboard:
            self.run.accelerator.end_training()
