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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from switchkd.data.images import GridImages, load_image_processor
from switchkd.data.templates import ChatTemplate, get_template
from switchkd.models.generation import GenerationConfig, default_stop_ids, generate
from switchkd.models.inputs import merge_image_features, position_ids_from_mask
from switchkd.models.vlm import VLMOutput, _cache_argument, output_cache
from switchkd.models.vlm import logits_at as head_logits

FAMILY = "qwen2_5_vl"
IMAGE_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"  # one image in the family's chat template


class _View(nn.Module):
    """Some of a model's modules under one name. The view is not registered in the model, so the model's
    parameter names (and its saved folder) stay the family's own."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class _Grouped(nn.Module):
    """Takes the merger's place while V runs: the groups of patches, unmerged, (N, C) -> (N / unit, unit·C)."""

    def __init__(self, unit: int):
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.unit * x.shape[-1])


class QwenVisionTower(_View):
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
            grouped = visual(pixel_values.to(self.patch_embed.proj.weight.dtype), grid_thw=image_grid_thw).pooler_output
        return grouped.reshape(-1, self.hidden_size)


@contextmanager
def _merger_replaced(visual: nn.Module, stand_in: nn.Module):
    merger = visual.merger
    visual.merger = stand_in
    try:
        yield
    finally:
        visual.merger = merger


class QwenLanguageModel(_View):
    """L: the text model and the LM head, with the accessors the rest of switchkd uses."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, config):
        super().__init__(model=language_model, lm_head=lm_head)
        self.config = config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_decoder(self) -> nn.Module:
        return self.model


class QwenVLModel(nn.Module):
    """A Qwen2.5-VL model (``hf``) with its tokenizer and image processor, speaking the pathway
    interface. ``system_prompt``: the family's default ("You are a helpful assistant.")."""

    family = FAMILY

    def __init__(
        self, hf: nn.Module, tokenizer, image_processor, system_prompt: str | None = "You are a helpful assistant."
    ):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template: ChatTemplate = get_template("chatml", system_prompt)
        tokenizer.chat_template = self.template.jinja(image=IMAGE_SPAN)
        config = hf.config
        self.image_token_id = int(config.image_token_id)
        self.image_wrap = ([int(config.vision_start_token_id)], [int(config.vision_end_token_id)])
        self.num_image_tokens = None  # per image (dynamic resolution)
        visual = hf.model.visual
        self._views = {
            "vision": QwenVisionTower(visual),
            "projector": visual.merger,
            "llm": QwenLanguageModel(hf.model.language_model, hf.lm_head, config.text_config),
        }
        self._check()

    def _check(self) -> None:
        if len(self.tokenizer) > self.llm.get_input_embeddings().num_embeddings:
            rows = self.llm.get_input_embeddings().num_embeddings
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the LLM embeds only {rows}")
        merge = self.hf.config.vision_config.spatial_merge_size
        if (self.image_processor.patch_size, self.image_processor.merge_size) != (
            self.hf.config.vision_config.patch_size,
            merge,
        ):
            raise ValueError(
                f"image processor patch/merge size {self.image_processor.patch_size}/{self.image_processor.merge_size}"
                f" != the vision tower's {self.hf.config.vision_config.patch_size}/{merge}"
            )

    # ---- the pathway interface ------------------------------------------------------------------

    @property
    def vision_tower(self) -> QwenVisionTower:
        return self._views["vision"]

    @property
    def projector(self) -> nn.Module:
        return self._views["projector"]

    @property
    def llm(self) -> QwenLanguageModel:
        return self._views["llm"]

    def parts(self) -> dict[str, nn.Module]:
        return dict(self._views)

    @property
    def image_reader(self) -> GridImages:
        return GridImages(self.image_processor)

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

    def encode_vision(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """V(x): (total patches, C·T·P·P) -> (total patches, hidden_size)."""
        if image_grid_thw is None:
            raise ValueError("Qwen2.5-VL images need their image_grid_thw (read them with model.image_reader)")
        return self.vision_tower(pixel_values, image_grid_thw)

    def project(self, features: torch.Tensor, images: dict | None = None) -> torch.Tensor:
        """P(V): the merger, (total patches, hidden_size) -> (image tokens, D_llm); each group of
        merge_size² neighbouring patches becomes one token, so it needs no shapes."""
        return self.projector(features)

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """(total patches, C·T·P·P) -> (image tokens, D_llm), every image of the batch in reading order."""
        return self.projector(self.encode_vision(pixel_values, image_grid_thw))

    def position_ids(self, input_ids, attention_mask, image_grid_thw=None) -> torch.Tensor:
        """(3, B, T) M-RoPE positions: text counts up, an image's tokens take their (t, h, w) place in its
        grid; padding does not count. transformers' ``get_rope_index`` computes them."""
        image = input_ids == self.image_token_id
        if image_grid_thw is None or not bool(image.any()):
            return position_ids_from_mask(attention_mask).unsqueeze(0).expand(3, -1, -1)
        positions, _ = self.hf.model.get_rope_index(
            input_ids, mm_token_type_ids=image.int(), image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        return positions

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_at: str | int | torch.Tensor | None = "all",
    ) -> VLMOutput:
        """As ``VisionLanguageModel.forward``; ``image_features`` are (image tokens, D_llm), and
        ``image_grid_thw`` places them (it is needed with them, for the positions)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, image_grid_thw)
        embedding = self.llm.get_input_embeddings()
        embeds = embedding(input_ids)
        feats = None if image_features is None else image_features.unsqueeze(0)
        embeds = merge_image_features(embeds, input_ids, feats, self.image_token_id)
        if position_ids is None:
            position_ids = self.position_ids(input_ids, attention_mask, image_grid_thw)
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

    def generate(self, input_ids, attention_mask=None, *, pixel_values=None, image_grid_thw=None, **kwargs):
        return generate(
            self,
            input_ids,
            attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            cfg=GenerationConfig(**kwargs),
        )

    def gradient_checkpointing_enable(self) -> None:
        enable = getattr(self.hf, "activation_checkpointing_enable", None) or self.hf.gradient_checkpointing_enable
        enable({"use_reentrant": False})

    # ---- save / load ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The family's own folder: ``config.json``, ``model.safetensors``, tokenizer (with a chat template
        that writes images as ``<|vision_start|><|image_pad|><|vision_end|>``) and
        ``preprocessor_config.json``; ``AutoModelForImageTextToText`` and vLLM read it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if state_dict is not None:
            state_dict = {k.removeprefix("hf."): v for k, v in state_dict.items() if k.startswith("hf.")}
        # transformers' generate stops where switchkd's does: at the end of the turn (and EOS)
        self.hf.generation_config.eos_token_id = default_stop_ids(self)
        self.hf.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.hf.save_pretrained(str(directory), state_dict=state_dict)
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))

    @classmethod
    def from_folder_config(
        cls, directory: str | Path, *, image_processor: dict | None = None, system_prompt: str | None = None
    ) -> QwenVLModel:
        """The folder's model with fresh (uninitialised) weights: built under ``torch.device("meta")``,
        shapes without memory, for a dry run."""
        from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        hf = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(str(directory)))
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
    ) -> QwenVLModel:
        """A Qwen2.5-VL folder (the Hub's, or one this class saved), in eval mode and in ``dtype``
        (float32 when None). ``image_processor``: settings over the saved ones (``min_pixels``,
        ``max_pixels``)."""
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        directory = Path(directory)
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(directory), dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        processor = load_image_processor(directory, **(image_processor or {}))
        model = cls(hf, tokenizer, processor, system_prompt=system_prompt)
        if device is not None:
            model.to(device)
        return model.eval()
