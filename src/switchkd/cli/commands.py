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


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run YAML (model, teacher, data, train, distill sections)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, data paths and model shapes, then stop (no weights are loaded)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5 distill.loss=bild_rkl")


def run_train(args: argparse.Namespace) -> int:
    from switchkd.training import load_config, train
    from switchkd.training.dry_run import dry_run

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg))
        return 0
    result = train(cfg, resume=args.resume)
    print(f"trained {result.steps} steps; model saved to {result.final_model}")
    if result.skipped:
        print(f"skipped samples: {dict(result.skipped)}")
    return 0


COMMANDS = {
    "train": (add_train, run_train, "train a stage (pt, dpt, sft, dft) from a YAML config; works under "
                                    "torchrun / accelerate launch"),
    "build": (add_build, run_build, "assemble a VLM from local component folders (or config dicts) and save it"),
}
