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

import torch
from torch import nn

from switchkd.data.images import CropImages
from switchkd.models.hub import HubVLM, LanguageModelView, View
from switchkd.models.inputs import position_ids_from_mask

FAMILY = "llava_onevision"


class OneVisionTower(View):
    """V: the SigLIP tower's hidden states at the feature layer, per crop (crops, tokens, width)."""

    def __init__(self, tower: nn.Module, feature_layer: int, select: str):
        super().__init__(encoder=tower)
        self.config = tower.config
        self.hidden_size = tower.config.hidden_size
        self.feature_layer, self.select = feature_layer, select
        self.num_tokens = None  # per image: its crops

    def unused_parameter_names(self) -> list[str]:
        """Layers after the feature layer (and SigLIP's post-norm and head) never reach the features."""
        layers = self.config.num_hidden_layers
        last = self.feature_layer % (layers + 1)  # hidden_states has layers + 1 entries
        names = [n for n, _ in self.encoder.named_parameters()]
        unused = [n for n in names if "post_layernorm" in n or ".head." in n]
        return unused + [n for n in names for i in range(last, layers) if f".layers.{i}." in n]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.encoder.parameters()).dtype
        out = self.encoder(pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]
        return features[:, 1:] if self.select == "default" else features


class OneVisionProjector(View):
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


class OneVisionModel(HubVLM):
    """A LLaVA-OneVision model (``hf``) with its tokenizer and image processor, speaking the pathway
    interface; the prompt marks an image with the family's ``<image>`` token, once per image token."""

    family = FAMILY
    hf_class = "LlavaOnevisionForConditionalGeneration"

    def __init__(self, hf: nn.Module, tokenizer, image_processor, **kwargs):
        if not isinstance(hf.config.vision_feature_layer, int):
            raise ValueError("LLaVA-OneVision with several vision feature layers is not supported")
        super().__init__(hf, tokenizer, image_processor, **kwargs)

    def _views_of(self, hf: nn.Module) -> dict[str, nn.Module]:
        inner, config = hf.model, hf.config
        return {
            "vision": OneVisionTower(
                inner.vision_tower, config.vision_feature_layer, config.vision_feature_select_strategy
            ),
            "projector": OneVisionProjector(inner.multi_modal_projector, inner),
            "llm": LanguageModelView(inner.language_model, hf.lm_head, config.text_config),
        }

    @property
    def image_reader(self) -> CropImages:
        c = self.hf.config
        return CropImages(
            self.image_processor,
            crop_size=c.vision_config.image_size,
            patch_size=c.vision_config.patch_size,
            grid_pinpoints=c.image_grid_pinpoints,
            aspect_ratio=c.vision_aspect_ratio,
        )

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
        packed, _ = self.hf.model.pack_image_features(
            torch.split(self.projector(features), crops),
            sizes,
            image_newline=self.projector.image_newline,
            vision_aspect_ratio=self.hf.config.vision_aspect_ratio,
        )
        return torch.cat(packed)

    def position_ids(self, input_ids, attention_mask, **shapes) -> torch.Tensor:
        """(B, T) 1-D positions counting attended tokens only."""
        return position_ids_from_mask(attention_mask)
