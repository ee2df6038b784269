"""Training stages (pt, dpt, sft, dft) on one process or many."""

from switchkd.training.config import Config, DataConfig, TrainConfig, load_config, save_config
from switchkd.training.stages import STAGES, apply_stage, trainable_parts
from switchkd.training.trainer import TrainResult, checkpoints, train

__all__ = ["STAGES", "Config", "DataConfig", "TrainConfig", "TrainResult", "apply_stage", "checkpoints",
           "load_config", "save_config", "train", "trainable_parts"]
