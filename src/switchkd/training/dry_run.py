"""``switchkd train --dry-run``: check a config, its data and the model shapes without training.

Models are built on the meta device from their configs, so a 7B teacher costs nothing here.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from transformers import AutoConfig

from switchkd.config import Config, ConfigError, ModelConfig, from_dict, require_folder
from switchkd.data.images import load_image, resolve_image_path
from switchkd.data.records import load_records, require_records, to_messages
from switchkd.distillation.switch import check_pair, switch_adapter
from switchkd.models import build_vlm
from switchkd.models.builders import processor_source, tokenizer_source
from switchkd.models.pathway import family_class, family_of
from switchkd.training.sharding import describe_share, process_share
from switchkd.training.stages import STAGES, apply_stage, trainable_parts

CHECK_RECORDS = 200
CHECK_IMAGES = 20


def _config_dict(source: str | dict, what: str) -> dict:
    if isinstance(source, dict):
        return source
    config = AutoConfig.from_pretrained(str(require_folder(source, what)))
    if hasattr(config, "vision_config") and what == "vision":
        config = config.vision_config
    return config.to_dict()


def _meta_config(cfg: ModelConfig, what: str) -> ModelConfig:
    """The same model with every component given as a config dict (no weights to read)."""
    if cfg.pretrained is not None:
        folder = require_folder(cfg.pretrained, "pretrained")
        meta = json.loads((folder / "config.json").read_text())
        saved = from_dict(ModelConfig, meta["model"])
        return dataclasses.replace(saved, tokenizer=str(folder), image_processor=str(folder))
    return dataclasses.replace(
        cfg,
        vision=_config_dict(cfg.vision, "vision"),
        llm=_config_dict(cfg.llm, "llm"),
        tokenizer=tokenizer_source(cfg),
        image_processor=processor_source(cfg),
    )


def build_meta(cfg: ModelConfig, what: str):
    """The model ``what`` (model or teacher) on the meta device: shapes without weights."""
    try:
        family = cfg.pretrained and family_of(require_folder(cfg.pretrained, "pretrained"))
        if family and family != "llava":
            overrides = cfg.image_processor if isinstance(cfg.image_processor, dict) else None
            with torch.device("meta"):
                return family_class(family).from_folder_config(cfg.pretrained, image_processor=overrides)
        meta_cfg = _meta_config(cfg, what)
    except ConfigError as exc:
        raise exc.under(what) from None
    with torch.device("meta"):
        return build_vlm(meta_cfg, section=what)


def _params(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:,.1f}M"


def _describe(model) -> str:
    """One model's parts, sizes and image tokens, in its family's terms."""
    tower = model.vision_tower
    if model.family == "qwen2_5_vl":
        size = model.image_processor.size
        return (
            f"Qwen2.5-VL, vision {_params(tower)} (width {tower.hidden_size}, {tower.config.depth} blocks), merger "
            f"{_params(model.projector)} -> one token per {model.image_reader.merge**2} patches of "
            f"{model.image_processor.patch_size} px, images resized to {size.shortest_edge:,}-{size.longest_edge:,} "
            f"pixels (up to {model.image_reader.max_tokens:,} tokens an image), LLM {_params(model.llm)} "
            f"(width {model.llm.config.hidden_size}); vocabulary {model.vocab_size:,}"
        )
    if model.family == "llava_onevision":
        return (
            f"LLaVA-OneVision, vision {_params(tower)} ({tower.config.model_type}, width {tower.hidden_size}, "
            f"{tower.config.num_hidden_layers} layers, {model.image_reader.crop_size} px crops), projector "
            f"{_params(model.projector)}, anyres up to {model.image_reader.max_tokens:,} tokens an image, LLM "
            f"{_params(model.llm)} (width {model.llm.config.hidden_size}); vocabulary {model.vocab_size:,}"
        )
    return (
        f"vision {_params(tower)} ({tower.config.model_type}, {tower.num_tokens} tokens of width "
        f"{tower.hidden_size}), projector {model.config.projector} {_params(model.projector)} -> "
        f"{model.num_image_tokens} image tokens, LLM {_params(model.llm)}; vocabulary {model.vocab_size:,}"
    )


def dry_run(cfg: Config, processes: int = 8) -> str:
    """The report; with ``train.distributed: fsdp``, what each of ``processes`` processes holds."""
    parts = trainable_parts(cfg.train.stage, cfg.train.trainable)
    lines = [f"stage {cfg.train.stage}: trainable {parts}"]
    student = build_meta(cfg.model, "model")
    teacher = None
    lines.append(f"student: {_describe(student)}")
    if STAGES[cfg.train.stage]["teacher"]:
        teacher = build_meta(cfg.teacher, "teacher")
        vocab = check_pair(student, teacher)
        adapter = switch_adapter(student, teacher, cfg.distill)
        lines.append(
            f"teacher: {_describe(teacher)}; pair checks passed "
            f"(shared vocabulary {vocab:,}); switch adapter: {adapter.extra_repr() if adapter else 'none needed'}; "
            f"distill {dataclasses.asdict(cfg.distill)}"
        )
    records = require_records(load_records(cfg.data.train), cfg.data.train)
    root = cfg.data.resolved_image_root
    with_image = 0
    for i, rec in enumerate(records[:CHECK_RECORDS]):
        _, image = to_messages(rec, i)
        if image is not None and with_image < CHECK_IMAGES:
            load_image(resolve_image_path(root, image))
            with_image += 1
    lines.append(
        f"data: {len(records):,} records in {cfg.data.train}; first {min(len(records), CHECK_RECORDS)} "
        f"valid, {with_image} images opened under {root}"
    )
    t = cfg.train
    lines.append(
        f"optimisation: lr {t.lr}, per-device batch {t.per_device_batch_size} x grad_accum {t.grad_accum}, "
        f"{t.scheduler} schedule, warm-up {t.warmup_ratio}, {t.distributed}, mixed precision "
        f"{t.mixed_precision}; output {t.output_dir}"
    )
    if t.distributed == "fsdp":
        apply_stage(student, parts)
        lines.append(describe_share(process_share(student, teacher, t, processes), t, processes))
    lines.append("dry run passed")
    return "\n".join(lines)
