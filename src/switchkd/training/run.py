"""What a training run is while it runs: its objects (``Run``) and its position (``TrainState``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from switchkd.config import Config


@dataclass
class TrainState:
    """Where a run stands. A checkpoint saves it as JSON and resume restores it."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    position: int = 0
    """Micro-batches of the current epoch already consumed."""
    skipped: Counter = field(default_factory=Counter)
    """Skipped samples by reason (this process's since the start; after a resume the main process
    carries the run's earlier total)."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "skipped": dict(self.skipped)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(int(data["step"]), int(data["epoch"]), int(data["position"]), Counter(data.get("skipped", {})))


@dataclass
class Run:
    """Everything one training run works with, built by ``setup``."""

    cfg: Config
    accelerator: Any
    """An ``accelerate.Accelerator``: processes, devices, mixed precision, gradient accumulation."""
    objective: torch.nn.Module
    """The prepared (possibly wrapped) objective; the student is its ``student`` submodule."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    sampler: Sampler
    total_steps: int
    run_id: str
    """Written to the output folder's run.json and into every checkpoint; resume uses only its own."""
    state: TrainState = field(default_factory=TrainState)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process
