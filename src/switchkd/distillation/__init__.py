"""The visual-switch distillation objective (its settings: ``switchkd.config.DistillConfig``)."""

from switchkd.distillation.switch import VisualSwitchDistiller, check_pair

__all__ = ["VisualSwitchDistiller", "check_pair"]
