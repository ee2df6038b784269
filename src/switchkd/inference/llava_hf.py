"""Export to and import from the Hugging Face LLaVA format (``LlavaForConditionalGeneration``), so
a student runs in transformers and in serving engines that load that format, and LLaVA-format
teachers can be used here.

    switchkd export --model runs/student/final --to llava-hf --out exported/
    switchkd import --from llava-hf exported/ --out runs/imported

Only the ``mlp2x_gelu`` projector has a LLaVA equivalent (``multi_modal_projector``); ``ldpv2`` and
``identity`` are refused with a clear message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from switchkd.config import ModelConfig, require_folder
from switchkd.models import build_vlm

# switchkd parameter prefix -> LlavaForConditionalGeneration prefix (transformers v5)
PREFIXES = (
    ("vision_tower.encoder.", "model.vision_tower."),
    ("projector.", "model.multi_modal_projector."),
    ("llm.model.", "model.language_model."),
    ("llm.lm_head.", "lm_head."),
)


def _rename(state: dict[str, torch.Tensor], forward: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for ours, theirs in PREFIXES:
            src, dst = (ours, theirs) if forward else (theirs, ours)
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
                break
        else:
            raise KeyError(f"no LLaVA mapping for parameter {key!r}")
    return out


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


def export_llava_hf(model, out_dir: str | Path) -> Path:
    """Write ``model`` as a LlavaForConditionalGeneration folder (config, safetensors, processor, template)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.initialization import no_init_weights

    if model.config.projector != "mlp2x_gelu":
        raise ValueError(
            f"the LLaVA format has a two-layer GELU MLP projector only; this model's projector "
            f"{model.config.projector!r} cannot be expressed (use the switchkd format)"
        )
    tower = model.vision_tower
    llm_cfg = model.llm.config
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm_cfg.to_dict(),
        image_token_index=model.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=tower.feature_layer,
        vision_feature_select_strategy="default" if tower.drop_cls else "full",
        image_seq_length=model.num_image_tokens,
        tie_word_embeddings=bool(getattr(llm_cfg, "tie_word_embeddings", False)),
    )
    with no_init_weights():
        hf = LlavaForConditionalGeneration(config)
    hf.tie_weights()
    state = _rename(model.state_dict(), forward=True)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"LLaVA export mismatch: missing {missing}, unexpected {unexpected}")
    hf = hf.to(model.dtype).eval()
    out = Path(out_dir)
    hf.save_pretrained(out)
    token = model.tokenizer.convert_ids_to_tokens(model.image_token_id)
    processor = LlavaProcessor(
        image_processor=_pil_llava_processor(model),
        tokenizer=model.tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=model.tokenizer.chat_template,
        image_token=token,
        num_additional_image_tokens=int(tower.has_cls),
    )
    processor.save_pretrained(out)
    return out


def import_llava_hf(
    folder: str | Path,
    out_dir: str | Path,
    chat_template: str = "chatml",
    system_prompt: str | None = "You are a helpful assistant.",
):
    """A switchkd model (saved to ``out_dir``) from a LlavaForConditionalGeneration folder."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    folder = require_folder(folder, "source")
    hf = LlavaForConditionalGeneration.from_pretrained(str(folder))
    cfg = hf.config
    if cfg.projector_hidden_act != "gelu" or getattr(cfg, "multimodal_projector_bias", True) is False:
        raise ValueError("only LLaVA models with the two-layer GELU projector (with biases) can be imported")
    layer = cfg.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer {layer!r}: only a single layer is supported")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image_token = tokenizer.convert_ids_to_tokens(cfg.image_token_index)
    model_cfg = ModelConfig(
        vision=cfg.vision_config.to_dict(),
        llm=cfg.text_config.to_dict(),
        projector="mlp2x_gelu",
        vision_feature_layer=layer,
        drop_cls=cfg.vision_feature_select_strategy == "default",
        tokenizer=str(folder),
        image_processor=_processor_settings(folder),
        image_token=image_token,
        chat_template=chat_template,
        system_prompt=system_prompt,
    )
    model = build_vlm(model_cfg, fresh_weights=False)
    state = _rename({k: v for k, v in hf.state_dict().items()}, forward=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(cfg.text_config, "tie_word_embeddings", False) or getattr(cfg, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "llm.lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"LLaVA import mismatch: missing {missing}, unexpected {unexpected}")
    model = model.to(hf.dtype).eval()
    model.config = dataclasses.replace(model.config, tokenizer=None, image_processor=None)
    model.save_pretrained(out_dir)
    return model


def _processor_settings(folder: Path) -> dict:
    """The exported processor's normalisation and size, as settings for a CLIP-style PIL processor."""
    import json

    if (folder / "preprocessor_config.json").is_file():  # older layout
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
    elif (folder / "processor_config.json").is_file():  # transformers v5 nests it in the processor
        cfg = json.loads((folder / "processor_config.json").read_text()).get("image_processor", {})
    else:
        raise FileNotFoundError(f"{folder}: no preprocessor_config.json or processor_config.json")
    return {k: cfg[k] for k in ("image_mean", "image_std") if k in cfg}
