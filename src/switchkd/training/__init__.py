"""Training stages (pt, dpt, sft, dft) on one process or many: ``train(cfg)``."""

from switchkd.config import Config, DataConfig, TrainConfig, load_config, save_config
from switchkd.training.checkpoint import checkpoints
from switchkd.training.run import Run, TrainState
from switchkd.training.setup import setup
from switchkd.training.stages import STAGES, apply_stage, trainable_parts
from switchkd.training.trainer import TrainResult, train, train_step

__all__ = [
    "STAGES",
    "Config",
    "DataConfig",
    "Run",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "apply_stage",
    "checkpoints",
    "load_config",
    "save_config",
    "setup",
    "train",
    "train_step",
    "trainable_parts",
]
