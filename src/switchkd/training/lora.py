"""LoRA students (peft, the ``lora`` extra): adapters injected into the student's LLM (and optionally
its vision tower) in place, so the model keeps its own structure and names; merged back at the end.

    counts = apply_lora(student, parts, cfg.train.lora)     # after the stage chose the trainable parts
    merge_lora(student)                                      # before the final save: plain weights again
"""

from __future__ import annotations

import logging

from torch import nn

from switchkd.config import ConfigError

log = logging.getLogger("switchkd.train")


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("needs peft: pip install -e .[lora]", key="train.lora") from None
    return peft


def _inject(module: nn.Module, targets: list, settings) -> int:
    """Adapters into ``module``'s ``targets``; only they train. Returns how many layers got one."""
    peft = _peft()
    module.requires_grad_(False)
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=list(targets)
    )
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as exc:
        raise ConfigError(f"{exc}".splitlines()[0], key="train.lora.target_modules") from None
    layers = [m for m in module.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)
    return len(layers)


def apply_lora(model, parts: dict[str, bool], settings) -> dict[str, int]:
    """LoRA in the LLM (which the stage must train) and, with ``settings.vision``, in the vision tower's
    layers that reach the features; trainable parameter counts per part."""
    if not parts.get("llm"):
        raise ConfigError("LoRA adapts the LLM, which this stage does not train", key="train.lora")
    n = _inject(model.llm, settings.target_modules, settings)
    log.info("LoRA rank %d in %d LLM layers", settings.rank, n)
    if settings.vision and parts.get("vision"):
        tower = model.vision_tower
        n = _inject(tower.encoder, settings.vision_target_modules, settings)
        for name in tower.unused_parameter_names():  # adapters past the feature layer never get a gradient
            tower.encoder.get_parameter(name).requires_grad_(False)
        log.info("LoRA rank %d in %d vision layers", settings.rank, n)
    counts = {}
    for part, module in (("vision", model.vision_tower), ("projector", model.projector), ("llm", model.llm)):
        counts[part] = sum(p.numel() for p in module.parameters() if p.requires_grad) if parts.get(part) else 0
    return counts


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and put the plain layer back (in place); returns
    how many were merged. The model then has exactly the parameters and names of one without LoRA."""
    if not has_lora(model):
        return 0
    lora = _peft().tuners.lora
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, lora.LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
            merged += 1
    return merged
