"""Training stages as data, applied by one function.

pt  : projector only (LLaVA-style alignment pre-training), no teacher
dpt : pt with the distillation terms (the paper's Table 5 ablation)
sft : vision, projector and LLM, no teacher (the baseline)
dft : vision, projector and LLM with the visual-switch distiller (paper Table 2)
"""

from __future__ import annotations

import logging

from switchkd.config import STAGES  # the table is data in the config schema

log = logging.getLogger("switchkd.train")

_MODULE = {"vision": "vision_tower", "projector": "projector", "llm": "llm"}


def trainable_parts(stage: str, overrides: dict | None = None) -> dict[str, bool]:
    parts = dict(STAGES[stage]["trainable"])
    parts.update({k: bool(v) for k, v in (overrides or {}).items()})
    return parts


def apply_stage(model, parts: dict[str, bool]) -> dict[str, int]:
    """Set ``requires_grad`` per part; returns trainable parameter counts per part."""
    counts = {}
    for part, train in parts.items():
        module = getattr(model, _MODULE[part])
        module.requires_grad_(train)
        counts[part] = sum(p.numel() for p in module.parameters()) if train else 0
    if not any(parts.values()):
        raise ValueError("no part of the model is trainable")
    if parts.get("vision"):
        # Parameters after the feature layer never get a gradient; left trainable, DDP would stop on
        # them ("parameters that were not used in producing loss") and the optimizer would carry them.
        unused = model.vision_tower.unused_parameter_names()
        for name in unused:
            model.vision_tower.encoder.get_parameter(name).requires_grad_(False)
        if unused:
            counts["vision"] = sum(p.numel() for p in model.vision_tower.parameters() if p.requires_grad)
            log.info(
                "vision: %d parameter tensors past feature layer %d are unused and stay frozen (%s ...)",
                len(unused),
                model.vision_tower.feature_layer,
                unused[0],
            )
    return counts
