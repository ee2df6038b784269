"""The visual-switch distillation objective."""

from switchkd.distillation.switch import DistillConfig, VisualSwitchDistiller, check_pair

__all__ = ["DistillConfig", "VisualSwitchDistiller", "check_pair"]
