"""Export to and import from the Hugging Face LLaVA format (``LlavaForConditionalGeneration``).

    switchkd export --model runs/student/final --to llava-hf --out exported/
    switchkd import --from llava-hf exported/ --out runs/imported

The exported folder is written for every reader of that format, not only the transformers that
wrote it:

- weights under the names of the LLaVA checkpoints on the Hub (``vision_tower.vision_model.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``), which
  transformers 4.x and 5, vLLM's ``LlavaForConditionalGeneration`` and SGLang's read;
- ``text_config`` with ``architectures`` (vLLM and SGLang pick the language model class from it),
  ``rope_theta`` beside transformers 5's ``rope_parameters`` (4.x reads only the former: Qwen2.5's
  theta of 10^6 would silently become 10^4), ``torch_dtype`` beside ``dtype``, and
  ``image_aspect_ratio: pad`` (SGLang pads to square only when told, as switchkd does);
- ``eos_token_id`` in ``generation_config.json`` and ``text_config``, so ``generate`` stops at the
  end of the turn;
- a tokenizer config 4.x can read (``additional_special_tokens``, a class name 4.x knows) and the
  image processor also as ``preprocessor_config.json``;
- a chat template that takes plain and structured content, an image part rendering as the image
  token, so ``processor.apply_chat_template(..., tokenize=True)`` gives switchkd's ``input_ids``.

Only the ``mlp2x_gelu`` projector has a LLaVA equivalent; ``ldpv2`` and ``identity`` are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from switchkd.config import ModelConfig, require_folder
from switchkd.formats.weights import FormatError, Rule, import_weights, read_json
from switchkd.models import VisionLanguageModel
from switchkd.models.generation import default_stop_ids

# Vision encoders that transformers 4.x, vLLM and SGLang hold under ``vision_model.`` (transformers 5
# dropped that level and maps the old names when loading).
_WRAPPED_VISION = {"clip_vision_model", "siglip_vision_model"}

# Source names of a LlavaForConditionalGeneration checkpoint -> ours; the Hub's (4.x) names and
# transformers 5's both read.
LAYOUT = (
    Rule(r"(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)", r"vision_tower.encoder.\1"),
    Rule(r"(?:model\.)?multi_modal_projector\.(.+)", r"projector.\1"),
    Rule(r"(?:model\.language_model|language_model\.model)\.(.+)", r"llm.model.\1"),
    Rule(r"(?:language_model\.)?lm_head\.(.+)", r"llm.lm_head.\1"),
)

# tokenizer_config.json keys transformers 5 writes that 4.x does not take
_TOKENIZER_V5_ONLY = ("backend", "is_local", "local_files_only")


def _tied(model) -> bool:
    return model.lm_head.weight is model.llm.get_input_embeddings().weight


def _export_state(model) -> dict[str, torch.Tensor]:
    wrapped = model.vision_tower.config.model_type in _WRAPPED_VISION
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("vision_tower.encoder."):
            rest = name.removeprefix("vision_tower.encoder.")
            key = f"vision_tower.vision_model.{rest}" if wrapped else f"vision_tower.{rest}"
        elif name.startswith("projector."):
            key = "multi_modal_projector." + name.removeprefix("projector.")
        elif name.startswith("llm.model."):
            key = "language_model.model." + name.removeprefix("llm.model.")
        elif name.startswith("llm.lm_head."):
            if _tied(model):
                continue  # the embedding holds it, as in Qwen2.5 <= 3B checkpoints
            key = "language_model.lm_head." + name.removeprefix("llm.lm_head.")
        else:
            raise KeyError(f"no LLaVA name for parameter {name!r}")
        out[key] = tensor.detach().contiguous().cpu()
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _config(model) -> dict:
    from transformers import LlavaConfig

    tower, llm_cfg, tok = model.vision_tower, model.llm.config, model.tokenizer
    text = llm_cfg.to_dict()
    rope = text.get("rope_parameters") or {}
    if "rope_theta" in rope:
        text["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            text["rope_scaling"] = {"type": rope["rope_type"], **rope}
    stops = default_stop_ids(model)
    text.update(
        architectures=[type(model.llm).__name__],
        eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else stops[0],
        pad_token_id=tok.pad_token_id,
        torch_dtype=_dtype_name(model.dtype),
    )
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=text,
        image_token_index=model.image_token_id,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=tower.feature_layer,
        vision_feature_select_strategy="default" if tower.drop_cls else "full",
        image_seq_length=model.num_image_tokens,
        tie_word_embeddings=_tied(model),
    ).to_dict()
    config.update(
        architectures=["LlavaForConditionalGeneration"],
        dtype=_dtype_name(model.dtype),
        torch_dtype=_dtype_name(model.dtype),
        image_aspect_ratio="pad",
    )
    config["text_config"].update({k: v for k, v in text.items() if k not in config["text_config"]})
    return config


def _pil_llava_processor(model):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    p = model.image_processor
    size = model.vision_tower.image_size
    # do_pad: pad to square with the mean colour, as switchkd does before resizing
    return LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(p.image_mean),
        image_std=list(p.image_std),
        do_center_crop=True,
    )


def _write_processor(model, out: Path, strategy: str) -> None:
    from transformers import LlavaProcessor

    tower = model.vision_tower
    token = model.config.image_token
    processor = LlavaProcessor(
        image_processor=_pil_llava_processor(model),
        tokenizer=model.tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=model.template.jinja(image=token),
        image_token=token,
        num_additional_image_tokens=int(tower.has_cls),
    )
    processor.save_pretrained(out)
    # transformers 4.x: extra special tokens as ``additional_special_tokens`` and a class it knows
    path = out / "tokenizer_config.json"
    tok = json.loads(path.read_text())
    extra = tok.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        tok["additional_special_tokens"] = extra
    if tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok["model_input_names"] = ["input_ids", "attention_mask"]  # 4.x's generic class adds token_type_ids
    for key in _TOKENIZER_V5_ONLY:
        tok.pop(key, None)
    path.write_text(json.dumps(tok, indent=2, ensure_ascii=False))
    # transformers 4.x reads the image processor from its own file
    nested = json.loads((out / "processor_config.json").read_text()).get("image_processor")
    if nested is not None:
        (out / "preprocessor_config.json").write_text(json.dumps(nested, indent=2))


def export_llava_hf(model: VisionLanguageModel, out_dir: str | Path) -> Path:
    """Write ``model`` as a LlavaForConditionalGeneration folder (config, generation config,
    safetensors, processor, tokenizer, chat template)."""
    from transformers import GenerationConfig

    if model.config.projector != "mlp2x_gelu":
        raise ValueError(
            f"the LLaVA format has a two-layer GELU MLP projector only; this model's projector "
            f"{model.config.projector!r} cannot be expressed (use the switchkd format)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _config(model)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(_export_state(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    tok = model.tokenizer
    GenerationConfig(
        eos_token_id=default_stop_ids(model),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        do_sample=False,
    ).save_pretrained(out)
    _write_processor(model, out, config["vision_feature_select_strategy"])
    return out


def _llava_model_config(folder: Path, config: dict, chat_template: str, system_prompt: str | None) -> ModelConfig:
    """Our config for a LLaVA folder; every refusal names the folder and happens before any weight is read."""
    kind = config.get("model_type")
    if "switchkd_version" in config:
        raise FormatError(f"{folder}: a switchkd model folder already; use it as it is (no import needed)")
    if kind != "llava":
        raise FormatError(
            f"{folder}: model_type is {kind!r}, not 'llava'; `import --from llava-hf` reads "
            "LlavaForConditionalGeneration folders"
        )
    parts = {}
    for key in ("vision_config", "text_config"):
        part = config.get(key)
        if not isinstance(part, dict) or "model_type" not in part:
            raise FormatError(f"{folder}/config.json: no {key} with a model_type (it would default to a 7B model)")
        parts[key] = {k: v for k, v in part.items() if k not in ("architectures", "_name_or_path")}
    if config.get("projector_hidden_act", "gelu") != "gelu" or config.get("multimodal_projector_bias", True) is False:
        raise FormatError(f"{folder}: only the two-layer GELU projector with biases has a switchkd equivalent")
    layer = config.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise FormatError(f"{folder}: vision_feature_layer {layer!r}: only a single layer is supported")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    index = config.get("image_token_index", config.get("image_token_id"))
    if not isinstance(index, int) or not 0 <= index < len(tokenizer):
        raise FormatError(f"{folder}: image_token_index {index!r} is not a token of its tokenizer")
    return ModelConfig(
        vision=parts["vision_config"],
        llm=parts["text_config"],
        projector="mlp2x_gelu",
        vision_feature_layer=layer,
        drop_cls=config.get("vision_feature_select_strategy", "default") == "default",
        tokenizer=str(folder),
        image_processor=_processor_settings(folder),
        image_token=tokenizer.convert_ids_to_tokens(index),
        chat_template=chat_template,
        system_prompt=system_prompt,
    )


def import_llava_hf(
    folder: str | Path,
    out_dir: str | Path | None,
    chat_template: str = "chatml",
    system_prompt: str | None = "You are a helpful assistant.",
) -> VisionLanguageModel:
    """A switchkd model from a LlavaForConditionalGeneration folder, saved to ``out_dir`` unless None."""
    folder = require_folder(folder, "source")
    model_cfg = _llava_model_config(folder, read_json(folder / "config.json"), chat_template, system_prompt)
    return import_weights(folder, model_cfg, LAYOUT, out_dir)


def _processor_settings(folder: Path) -> dict:
    """The exported processor's normalisation, as settings for a CLIP-style PIL processor."""
    if (folder / "preprocessor_config.json").is_file():
        cfg = read_json(folder / "preprocessor_config.json")
    elif (folder / "processor_config.json").is_file():  # transformers 5 nests it in the processor
        cfg = read_json(folder / "processor_config.json").get("image_processor", {})
    else:
        raise FormatError(f"{folder}: no preprocessor_config.json or processor_config.json")
    return {k: cfg[k] for k in ("image_mean", "image_std") if k in cfg}
