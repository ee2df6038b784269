"""Qwen2.5-VL through the pathway interface (``switchkd.models.pathway``).

    model = QwenVLModel.from_pretrained("Qwen2.5-VL-3B-Instruct")       # a local folder from the Hub
    features = model.encode_vision(batch["pixel_values"], batch["image_grid_thw"])   # V: before the merger
    embeds = model.projector(features)                                              # P: the merger

The model is transformers' own ``Qwen2_5_VLForConditionalGeneration`` (``model.hf``): parameter names,
the saved folder and what vLLM or ``AutoModelForImageTextToText`` read are the family's. switchkd
reaches its parts through views that are not registered in it:

- V (``vision_tower``): the patch embedding and the vision blocks. Their output is in the blocks'
  window order; V returns it in the image's own order, in groups of ``merge_size²`` neighbouring
  patches (the order the processor wrote the patches in), so any model of the family with the same
  patch and merge sizes can read it.
- P (``projector``): the merger, which maps each group of ``merge_size²`` patches to one LLM token.
- L (``llm``): the text model and the LM head, run on input embeddings with the family's 3-D M-RoPE
  position ids (``position_ids``: transformers' ``get_rope_index``, from the prompt's image tokens and
  each image's grid).

An image is read at its own aspect ratio (``GridImages``), so its number of tokens differs per image;
the prompt wraps them in ``<|vision_start|>`` ... ``<|vision_end|>``, as the family's processor does.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from switchkd.data.images import GridImages
from switchkd.models.hub import HubVLM, LanguageModelView, View
from switchkd.models.inputs import position_ids_from_mask

FAMILY = "qwen2_5_vl"
IMAGE_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"  # one image in the family's chat template


class _Grouped(nn.Module):
    """Takes the merger's place while V runs: the groups of patches, unmerged, (N, C) -> (N / unit, unit·C)."""

    def __init__(self, unit: int):
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.unit * x.shape[-1])


class QwenVisionTower(View):
    """V: patch embedding and vision blocks of a Qwen2.5-VL vision transformer; the output is
    (total patches, hidden_size) in the image's order (merge groups of neighbouring patches)."""

    def __init__(self, visual: nn.Module):
        super().__init__(patch_embed=visual.patch_embed, blocks=visual.blocks)
        self._visual = [visual]  # the whole tower runs the forward; a list keeps it unregistered
        self.config = visual.config
        self.hidden_size = visual.config.hidden_size
        self.num_tokens = None  # per image: t·h·w patches

    @property
    def encoder(self) -> nn.Module:
        return self

    def unused_parameter_names(self) -> list[str]:
        return []  # every block reaches the features

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        visual = self._visual[0]
        with _merger_replaced(visual, _Grouped(visual.spatial_merge_unit)):
            # transformers' forward: window order in the blocks, groups put back in image order at the end
            dtype = self.patch_embed.proj.weight.dtype
            grouped = visual(pixel_values.to(dtype), grid_thw=image_grid_thw).pooler_output
        return grouped.reshape(-1, self.hidden_size)


@contextmanager
def _merger_replaced(visual: nn.Module, stand_in: nn.Module):
    merger = visual.merger
    visual.merger = stand_in
    try:
        yield
    finally:
        visual.merger = merger


class QwenVLModel(HubVLM):
    """A Qwen2.5-VL model (``hf``) with its tokenizer and image processor, speaking the pathway
    interface. The prompt wraps each image's tokens in ``<|vision_start|>`` ... ``<|vision_end|>``."""

    family = FAMILY
    hf_class = "Qwen2_5_VLForConditionalGeneration"
    image_in_template = IMAGE_SPAN

    def __init__(self, hf: nn.Module, tokenizer, image_processor, **kwargs):
        super().__init__(hf, tokenizer, image_processor, **kwargs)
        config = hf.config
        self.image_wrap = ([int(config.vision_start_token_id)], [int(config.vision_end_token_id)])
        vision = config.vision_config
        mine = (image_processor.patch_size, image_processor.merge_size)
        if mine != (vision.patch_size, vision.spatial_merge_size):
            raise ValueError(
                f"image processor patch/merge size {mine[0]}/{mine[1]} != the vision tower's "
                f"{vision.patch_size}/{vision.spatial_merge_size}"
            )

    def _views_of(self, hf: nn.Module) -> dict[str, nn.Module]:
        visual = hf.model.visual
        return {
            "vision": QwenVisionTower(visual),
            "projector": visual.merger,
            "llm": LanguageModelView(hf.model.language_model, hf.lm_head, hf.config.text_config),
        }

    @property
    def image_reader(self) -> GridImages:
        return GridImages(self.image_processor)

    def encode_vision(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """V(x): (total patches, C·T·P·P) -> (total patches, hidden_size)."""
        if image_grid_thw is None:
            raise ValueError("Qwen2.5-VL images need their image_grid_thw (read them with model.image_reader)")
        return self.vision_tower(pixel_values, image_grid_thw)

    def project(self, features: torch.Tensor, images: dict | None = None) -> torch.Tensor:
        """P(V): the merger, (total patches, hidden_size) -> (image tokens, D_llm); each group of
        merge_size² neighbouring patches becomes one token, so it needs no shapes."""
        return self.projector(features)

    def position_ids(self, input_ids, attention_mask, image_grid_thw=None, **shapes) -> torch.Tensor:
        """(3, B, T) M-RoPE positions: text counts up, an image's tokens take their (t, h, w) place in its
        grid; padding does not count. transformers' ``get_rope_index`` computes them."""
        image = input_ids == self.image_token_id
        if image_grid_thw is None or not bool(image.any()):
            return position_ids_from_mask(attention_mask).unsqueeze(0).expand(3, -1, -1)
        positions, _ = self.hf.model.get_rope_index(
            input_ids, mm_token_type_ids=image.int(), image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        return positions
