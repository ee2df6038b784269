"""The optimizer's state as files, for every checkpoint format: its tensors by ``"<index>.<name>"``
(a safetensors file) and the rest, param groups and scalars, as JSON."""

from __future__ import annotations

import torch


def flatten(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)``: the state's tensors by ``index.name``, and ``{"param_groups", "scalars"}``."""
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in saved["state"].items():
        for name, value in entry.items():
            (tensors if isinstance(value, torch.Tensor) else scalars)[f"{index}.{name}"] = value
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars}


def unflatten(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer state dict that ``flatten`` took apart."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
