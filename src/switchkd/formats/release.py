"""Import of the released Switch-KD checkpoint and of MobileVLM V2 checkpoints.

    switchkd import --from switchkd-release Switch-KD-Qwen2.5-CLIP-1.8B/ --out runs/release
    switchkd import --from mobilevlm MobileVLM_V2-1.7B/ --vision clip-vit-large-patch14-336/ --out runs/mvlm

The release (HaoyiSun/Switch-KD-Qwen2.5-CLIP-1.8B: CLIP-L/14-336 -> LDPNetV2 -> Qwen2.5-1.5B) was
trained with xtuner and is loaded by its ``chat.py`` through remote code. Its exact tensor names
could not be checked here (no download), so both layouts are read by the documented module names
and nothing is guessed beyond them: xtuner's ``LLaVAModel`` holds ``visual_encoder``, ``projector``
and ``llm``; MobileVLM V2 (whose LDPNetV2 the release uses, with the same ``mlp.mlp.{0,2}`` and
``peg.peg.0`` names as our ``ldpv2``) holds ``model.vision_tower.vision_tower``,
``model.mm_projector`` and the language model at the top. A checkpoint whose names do not fit is
refused with one line listing every unmatched and missing name; its layout can then be added here
as one more rule table.

Where the configuration lives also differs, so each part is looked for in turn:

- language model: ``--llm`` (a local folder, its config.json), else the checkpoint config's
  ``text_config`` / ``llm_config``, else the checkpoint config itself (MobileVLM's);
- vision tower: ``--vision`` (a local CLIP/SigLIP folder: its config, and its weights where the
  checkpoint holds none, as MobileVLM does for a frozen tower), else ``vision_config`` /
  ``visual_encoder_config``;
- projector: ``mm_projector_type`` / ``projector_type`` (``ldpnetv2`` or ``mlp2x_gelu``); the release
  is LDPNetV2 (its model card), pooled to ``grid`` x ``grid`` tokens (12 x 12 = 144 for the release and
  MobileVLM V2; the pooling has no weights to tell it from);
- vision layer: ``mm_vision_select_layer`` / ``visual_select_layer`` / ``vision_feature_layer``
  (default -2, as LLaVA and xtuner), the CLS token dropped (``patch`` features).
"""

from __future__ import annotations

from pathlib import Path

from switchkd.config import ModelConfig, require_folder
from switchkd.formats.weights import FormatError, Rule, import_weights, read_json

# Buffers older checkpoints saved that every model here recomputes.
IGNORE = (r".*rotary_emb\.inv_freq", r".*embeddings\.position_ids")

_MLP_INDEX = (  # nn.Sequential(Linear, GELU, Linear) as saved by xtuner's ProjectorModel and LLaVA
    (r"0\.(.+)", r"linear_1.\1"),
    (r"2\.(.+)", r"linear_2.\1"),
)


def _projector_rules(prefix: str, projector: str) -> list[Rule]:
    rules = []
    if projector == "mlp2x_gelu":
        rules += [Rule(prefix + src, "projector." + dst) for src, dst in _MLP_INDEX]
    return rules + [Rule(prefix + r"(.+)", r"projector.\1")]


LAYOUTS = ("switchkd-release", "mobilevlm")


def layout(name: str, projector: str) -> list[Rule]:
    """The renaming rules of a release layout for a given projector."""
    if name == "switchkd-release":
        return [
            Rule(r"(?:model\.)?visual_encoder\.(?:vision_model\.)?(.+)", r"vision_tower.encoder.\1"),
            *_projector_rules(r"(?:model\.)?projector\.(?:model\.)?", projector),
            Rule(r"(?:model\.)?llm\.(.+)", r"llm.\1"),
        ]
    if name == "mobilevlm":
        return [
            Rule(r"model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)", r"vision_tower.encoder.\1"),
            *_projector_rules(r"model\.mm_projector\.", projector),
            Rule(r"model\.(.+)", r"llm.model.\1"),
            Rule(r"lm_head\.(.+)", r"llm.lm_head.\1"),
        ]
    raise ValueError(f"unknown layout {name!r}; valid: {', '.join(LAYOUTS)}")


_PROJECTORS = {"ldpnetv2": "ldpv2", "ldpv2": "ldpv2", "mlp2x_gelu": "mlp2x_gelu"}

# Keys of MobileVLM's config.json that describe the vision side, not the language model.
_MM_KEYS = ("mm_", "vision_tower", "image_", "tune_", "freeze_", "use_mm", "mm_use")


def _first(config: dict, *keys: str):
    return next((config[k] for k in keys if config.get(k) is not None), None)


def _llm_config(folder: Path, config: dict, llm: str | None) -> dict:
    if llm is not None:
        part = read_json(require_folder(llm, "llm") / "config.json")
    else:
        part = _first(config, "text_config", "llm_config")
        if part is None and "num_hidden_layers" in config and "vocab_size" in config:
            part = {k: v for k, v in config.items() if not k.startswith(_MM_KEYS)}
    if not isinstance(part, dict):
        raise FormatError(
            f"{folder}/config.json: no language model config (text_config, llm_config, or a top-level "
            "LLM config); pass --llm with the language model's local folder (for the release: Qwen2.5-1.5B-Instruct)"
        )
    part = {k: v for k, v in part.items() if k not in ("architectures", "_name_or_path", "auto_map")}
    part["model_type"] = _llm_type(folder, part, config)
    return part


def _llm_type(folder: Path, part: dict, config: dict) -> str:
    """The transformers model type of the language model; MobileVLM names its own (``mobilevlm``)."""
    from transformers import CONFIG_MAPPING

    kind = part.get("model_type")
    if kind in CONFIG_MAPPING:
        return kind
    names = " ".join([str(kind), *map(str, config.get("architectures") or [])]).lower()
    for hint, known in (("qwen", "qwen2"), ("llama", "llama")):
        if hint in names:
            return known
    raise FormatError(f"{folder}: cannot tell the language model's type from {kind!r}; pass --llm with its folder")


def _vision(folder: Path, config: dict, vision: str | None) -> str | dict:
    if vision is not None:
        return str(require_folder(vision, "vision"))
    part = _first(config, "vision_config", "visual_encoder_config")
    if isinstance(part, dict) and "model_type" in part:
        return {k: v for k, v in part.items() if k not in ("architectures", "_name_or_path")}
    named = _first(config, "mm_vision_tower", "visual_encoder")
    hint = f" (it names {named!r})" if isinstance(named, str) else ""
    raise FormatError(
        f"{folder}/config.json: no vision tower config{hint}; pass --vision with the vision tower's local folder"
    )


def release_model_config(
    folder: Path,
    name: str,
    *,
    vision: str | None = None,
    llm: str | None = None,
    tokenizer: str | None = None,
    grid: int = 12,
    chat_template: str = "chatml",
    system_prompt: str | None = "You are a helpful assistant.",
) -> ModelConfig:
    """Our config for a release-layout folder (see the module docstring for where each part is read)."""
    config = read_json(folder / "config.json")
    kind = _first(config, "mm_projector_type", "projector_type") or ("ldpnetv2" if name == "switchkd-release" else None)
    if kind not in _PROJECTORS:
        raise FormatError(f"{folder}: projector type {kind!r} has no switchkd equivalent; valid: {sorted(_PROJECTORS)}")
    layer = _first(config, "mm_vision_select_layer", "visual_select_layer", "vision_feature_layer")
    select = _first(config, "mm_vision_select_feature", "vision_feature_select_strategy") or "patch"
    tok = tokenizer or (str(folder) if (folder / "tokenizer_config.json").is_file() else None)
    if tok is None:
        raise FormatError(f"{folder}: no tokenizer files; pass --tokenizer with the language model's folder")
    return ModelConfig(
        vision=_vision(folder, config, vision),
        llm=_llm_config(folder, config, llm),
        projector=_PROJECTORS[kind],
        projector_kwargs={"grid": grid} if _PROJECTORS[kind] == "ldpv2" else {},
        vision_feature_layer=-2 if layer is None else int(layer),
        drop_cls=select in ("patch", "default"),
        tokenizer=tok,
        chat_template=chat_template,
        system_prompt=system_prompt,
    )


def import_release(folder: str | Path, out_dir: str | Path | None, name: str = "switchkd-release", **options):
    """A switchkd model from a release-layout folder, saved to ``out_dir`` unless None. ``options`` are
    ``release_model_config``'s keywords (vision, llm, tokenizer, grid, chat_template, system_prompt)."""
    folder = require_folder(folder, "source")
    model_cfg = release_model_config(folder, name, **options)
    rules = layout(name, model_cfg.projector)
    # A vision tower read from its own folder may be absent from the checkpoint (frozen, not saved).
    from_folder = options.get("vision") is not None
    return import_weights(folder, model_cfg, rules, out_dir, ignore=IGNORE, vision_from_folder=from_folder)
