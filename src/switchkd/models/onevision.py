"""LLaVA-OneVision through the pathway interface (``switchkd.models.pathway``).

    model = OneVisionModel.from_pretrained("llava-onevision-qwen2-0.5b-ov-hf")    # a local folder

The model is transformers' own ``LlavaOnevisionForConditionalGeneration`` (``model.hf``), so the saved
folder is the family's. Its 0.5B and 7B releases share one SigLIP tower (1152 wide, 384 px crops) and
Qwen2 LLMs: the paper's own composition at scale. An image is read "anyres": one crop of the whole
picture at 384 x 384 plus the crops of the grid (``image_grid_pinpoints``) that fits its aspect ratio.

- V (``vision_tower``, ``encode_vision``): SigLIP's hidden states at ``vision_feature_layer`` for every
  crop, (crops, 729, 1152) — the switch point. Both models of a pair read the same crops.
- P (``project``): the two-layer projector on every crop, then transformers' own packing: the grid's
  crops joined into one feature map, the padding of the aspect ratio cut away, pooled down past
  ``anyres_max_9``, a learned ``image_newline`` after each row, the whole-picture crop first. The
  projector part (``projector``) holds the MLP and ``image_newline``.
- L (``llm``): the Qwen2 LLM and its head on 1-D positions.

The number of image tokens differs per image; ``CropImages`` counts them with the same packing code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from switchkd.data.images import CropImages, load_image_processor
from switchkd.data.templates import ChatTemplate, get_template
from switchkd.models.generation import GenerationConfig, default_stop_ids, generate
from switchkd.models.inputs import merge_image_features, position_ids_from_mask
from switchkd.models.qwen_vl import QwenLanguageModel, _View
from switchkd.models.vlm import VLMOutput, _cache_argument, output_cache
from switchkd.models.vlm import logits_at as head_logits

FAMILY = "llava_onevision"


class OneVisionTower(_View):
    """V: the SigLIP tower's hidden states at the feature layer, per crop (crops, tokens, width)."""

    def __init__(self, tower: nn.Module, feature_layer: int, select: str):
        super().__init__(encoder=tower)
        self.config = tower.config
        self.hidden_size = tower.config.hidden_size
        self.feature_layer, self.select = feature_layer, select
        self.num_tokens = None  # per image: its crops

    def unused_parameter_names(self) -> list[str]:
        """Layers after the feature layer (and SigLIP's head) never reach the features."""
        layers = self.config.num_hidden_layers
        last = self.feature_layer % (layers + 1)  # hidden_states has layers + 1 entries
        unused = [n for n, _ in self.encoder.named_parameters() if "post_layernorm" in n or ".head." in n]
        for i in range(last, layers):
            unused += [n for n, _ in self.encoder.named_parameters() if f".layers.{i}." in n]
        return unused

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.encoder.parameters()).dtype
        out = self.encoder(pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]
        return features[:, 1:] if self.select == "default" else features


class OneVisionProjector(_View):
    """P's parameters: the two-layer projector and the learned ``image_newline``. The newline is read
    from its owner at each use, not held: a sharding engine (FSDP2) replaces the owner's parameters with
    sharded ones, and a reference kept here would go on training the replaced tensor."""

    def __init__(self, projector: nn.Module, owner: nn.Module):
        super().__init__(mlp=projector)
        self._owner = [owner]  # unregistered: the model's own names stay the family's

    @property
    def image_newline(self) -> nn.Parameter:
        return self._owner[0].image_newline

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from super().named_parameters(prefix, recurse, remove_duplicate)
        yield (f"{prefix}." if prefix else "") + "image_newline", self.image_newline

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class OneVisionModel(nn.Module):
    """A LLaVA-OneVision model (``hf``) with its tokenizer and image processor, speaking the pathway
    interface."""

    family = FAMILY
    image_wrap: tuple[list[int], list[int]] = ([], [])

    def __init__(
        self, hf: nn.Module, tokenizer, image_processor, system_prompt: str | None = "You are a helpful assistant."
    ):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template: ChatTemplate = get_template("chatml", system_prompt)
        tokenizer.chat_template = self.template.jinja()  # the image part is "<image>", the family's token
        config = hf.config
        self.image_token_id = int(config.image_token_id)
        self.num_image_tokens = None  # per image (anyres crops)
        inner = hf.model
        self._views = {
            "vision": OneVisionTower(
                inner.vision_tower, config.vision_feature_layer, config.vision_feature_select_strategy
            ),
            "projector": OneVisionProjector(inner.multi_modal_projector, inner),
            "llm": QwenLanguageModel(inner.language_model, hf.lm_head, config.text_config),
        }
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError("LLaVA-OneVision with several vision feature layers is not supported")
        if len(tokenizer) > self.llm.get_input_embeddings().num_embeddings:
            rows = self.llm.get_input_embeddings().num_embeddings
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM embeds only {rows}")

    # ---- the pathway interface ------------------------------------------------------------------

    @property
    def vision_tower(self) -> OneVisionTower:
        return self._views["vision"]

    @property
    def projector(self) -> OneVisionProjector:
        return self._views["projector"]

    @property
    def llm(self) -> QwenLanguageModel:
        return self._views["llm"]

    def parts(self) -> dict[str, nn.Module]:
        return dict(self._views)

    @property
    def image_reader(self) -> CropImages:
        c = self.hf.config
        return CropImages(
            self.image_processor,
            crop_size=c.vision_config.image_size,
            patch_size=c.vision_config.patch_size,
            grid_pinpoints=c.image_grid_pinpoints,
            aspect_ratio=c.vision_aspect_ratio,
            cls_token=c.vision_feature_select_strategy == "default",
        )

    @property
    def config(self):
        return self.hf.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.lm_head.weight.dtype

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.lm_head

    def encode_vision(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """V(x): (crops of every image, 3, 384, 384) -> (crops, tokens, width)."""
        return self.vision_tower(pixel_values)

    def project(self, features: torch.Tensor, images: dict) -> torch.Tensor:
        """P(V): the projector on every crop, then each image's crops packed as transformers packs them
        (its ``pack_image_features``); (image tokens of every image, D_llm) in reading order."""
        if images is None or images.get("image_sizes") is None:
            raise ValueError("LLaVA-OneVision images need their image_sizes (read them with model.image_reader)")
        sizes = images["image_sizes"]
        crops = [self.image_reader.crops(size) for size in sizes]
        inner = self.hf.model
        packed, _ = inner.pack_image_features(
            torch.split(self.projector(features), crops),
            sizes,
            image_newline=self.projector.image_newline,
            vision_aspect_ratio=self.hf.config.vision_aspect_ratio,
        )
        return torch.cat(packed)

    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.encode_vision(pixel_values), {"image_sizes": image_sizes})

    def position_ids(self, input_ids, attention_mask, **shapes) -> torch.Tensor:
        return position_ids_from_mask(attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_at: str | int | torch.Tensor | None = "all",
    ) -> VLMOutput:
        """As ``VisionLanguageModel.forward``; ``image_features`` are (image tokens, D_llm)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, image_sizes)
        embedding = self.llm.get_input_embeddings()
        safe_ids = input_ids.masked_fill(input_ids == self.image_token_id, 0)
        feats = None if image_features is None else image_features.unsqueeze(0)
        embeds = merge_image_features(embedding(safe_ids), input_ids, feats, self.image_token_id)
        if position_ids is None:
            position_ids = self.position_ids(input_ids, attention_mask)
        decoder = self.llm.get_decoder()
        kwargs = {} if past_key_values is None else {_cache_argument(type(decoder)): past_key_values}
        out = decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        return VLMOutput(head_logits(self.lm_head, hidden, logits_at), hidden, output_cache(out))

    def generate(self, input_ids, attention_mask=None, *, pixel_values=None, image_sizes=None, **kwargs):
        return generate(
            self,
            input_ids,
            attention_mask,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            cfg=GenerationConfig(**kwargs),
        )

    def gradient_checkpointing_enable(self) -> None:
        enable = getattr(self.hf, "activation_checkpointing_enable", None) or self.hf.gradient_checkpointing_enable
        enable({"use_reentrant": False})

    # ---- save / load ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The family's own folder (``LlavaOnevisionForConditionalGeneration`` reads it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if state_dict is not None:
            state_dict = {k.removeprefix("hf."): v for k, v in state_dict.items() if k.startswith("hf.")}
        self.hf.generation_config.eos_token_id = default_stop_ids(self)
        self.hf.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.hf.save_pretrained(str(directory), state_dict=state_dict)
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))

    @classmethod
    def from_folder_config(
        cls, directory: str | Path, *, image_processor: dict | None = None, system_prompt: str | None = None
    ) -> OneVisionModel:
        """Fresh weights from the folder's config (under ``torch.device("meta")``: shapes only)."""
        from transformers import AutoConfig, AutoTokenizer, LlavaOnevisionForConditionalGeneration

        hf = LlavaOnevisionForConditionalGeneration._from_config(AutoConfig.from_pretrained(str(directory)))
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        processor = load_image_processor(directory, **(image_processor or {}))
        return cls(hf, tokenizer, processor, system_prompt=system_prompt or "You are a helpful assistant.")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        image_processor: dict | None = None,
        system_prompt: str | None = "You are a helpful assistant.",
    ) -> OneVisionModel:
        from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

        hf = LlavaOnevisionForConditionalGeneration.from_pretrained(str(directory), dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        processor = load_image_processor(directory, **(image_processor or {}))
        model = cls(hf, tokenizer, processor, system_prompt=system_prompt)
        if device is not None:
            model.to(device)
        return model.eval()
