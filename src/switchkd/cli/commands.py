"""Subcommands: ``COMMANDS[name] = (add_arguments, run, help)``; each ``run`` is a thin call into the library."""

from __future__ import annotations

import argparse
from pathlib import Path


def _model_config(path: str | None, overrides: list[str]):
    from switchkd.config import ModelConfig, apply_overrides, from_dict, load_yaml

    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(ModelConfig, data.get("model", data))


def add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML with a `model:` section (vision, llm, projector, ...)")
    p.add_argument("--out", required=True, help="folder to write the assembled model to")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.projector=ldpv2")


def run_build(args: argparse.Namespace) -> int:
    from switchkd.models import build_vlm

    overrides = [o.removeprefix("model.") for o in args.overrides]
    model = build_vlm(_model_config(args.config, overrides))
    model.save_pretrained(Path(args.out))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {n_params / 1e6:.1f}M-parameter VLM ({model.num_image_tokens} image tokens) to {args.out}")
    return 0


COMMANDS = {
    "build": (add_build, run_build, "assemble a VLM from local component folders (or config dicts) and save it"),
}
