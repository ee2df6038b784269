"""What the whole-model families (Qwen2.5-VL, LLaVA-OneVision) share: a transformers model (``hf``) with
its tokenizer and image processor, reached through views of its parts that are not registered in it
(so its parameter names and its saved folder stay the family's), the forward over input embeddings,
generation, and saving and loading the family's own folder. A family adds what differs: its views
(``_views_of``), how it reads images (``image_reader``), V (``encode_vision``), P (``project``) and its
positions (``position_ids``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from switchkd.data.images import load_image_processor
from switchkd.data.records import IMAGE_PLACEHOLDER
from switchkd.data.templates import ChatTemplate, get_template
from switchkd.models.generation import GenerationConfig, default_stop_ids, generate
from switchkd.models.vlm import VLMOutput, enable_checkpointing, run_llm

SYSTEM_PROMPT = "You are a helpful assistant."  # both families' default system line


class View(nn.Module):
    """Some of a model's modules under one name. The view is not registered in the model, so the model's
    parameter names (and its saved folder) stay the family's own."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class LanguageModelView(View):
    """L: a family's text model and LM head, with the accessors the rest of switchkd uses."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, config):
        super().__init__(model=language_model, lm_head=lm_head)
        self.config = config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_decoder(self) -> nn.Module:
        return self.model


class HubVLM(nn.Module, ABC):
    """A whole transformers VLM speaking the pathway interface (``switchkd.models.pathway``)."""

    family: str
    hf_class: str  # transformers' class of the family's folders
    image_in_template = IMAGE_PLACEHOLDER  # how the tokenizer's chat template writes an image part
    image_wrap: tuple[list[int], list[int]] = ([], [])
    num_image_tokens = None  # per image: the family reads each image at its own size

    def __init__(self, hf: nn.Module, tokenizer, image_processor, system_prompt: str | None = SYSTEM_PROMPT):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template: ChatTemplate = get_template("chatml", system_prompt)
        tokenizer.chat_template = self.template.jinja(image=self.image_in_template)
        self.image_token_id = int(hf.config.image_token_id)
        self._views = self._views_of(hf)
        rows = self.llm.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM embeds only {rows}")

    @abstractmethod
    def _views_of(self, hf: nn.Module) -> dict[str, nn.Module]:
        """The family's parts of ``hf`` as ``{"vision", "projector", "llm"}`` views."""

    # ---- the pathway interface ------------------------------------------------------------------

    @property
    def vision_tower(self) -> nn.Module:
        return self._views["vision"]

    @property
    def projector(self) -> nn.Module:
        return self._views["projector"]

    @property
    def llm(self) -> LanguageModelView:
        return self._views["llm"]

    def parts(self) -> dict[str, nn.Module]:
        return dict(self._views)

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

    def encode_images(self, pixel_values: torch.Tensor, **shapes: torch.Tensor) -> torch.Tensor:
        """P(V(x)): every image of the batch, (image tokens, D_llm) in reading order."""
        return self.project(self.encode_vision(pixel_values, **shapes), shapes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_at: str | int | torch.Tensor | None = "all",
        **shapes: torch.Tensor,
    ) -> VLMOutput:
        """As ``VisionLanguageModel.forward``; ``image_features`` are (image tokens, D_llm), and ``shapes``
        the images' own shapes (``image_grid_thw``, ``image_sizes``), which the positions may need."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, **shapes)
        if position_ids is None:
            position_ids = self.position_ids(input_ids, attention_mask, **shapes)
        features = None if image_features is None else image_features.unsqueeze(0)
        return run_llm(
            self.llm,
            input_ids,
            attention_mask,
            features,
            self.image_token_id,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_at=logits_at,
        )

    def generate(self, input_ids, attention_mask=None, *, pixel_values=None, **kwargs) -> torch.Tensor:
        """New tokens after the prompt; ``kwargs``: the images' shapes and ``GenerationConfig`` fields."""
        shapes = {k: kwargs.pop(k) for k in ("image_grid_thw", "image_sizes") if k in kwargs}
        return generate(
            self, input_ids, attention_mask, pixel_values=pixel_values, cfg=GenerationConfig(**kwargs), **shapes
        )

    def gradient_checkpointing_enable(self) -> None:
        enable_checkpointing(self.hf)

    # ---- save / load ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The family's own folder: ``config.json``, ``model.safetensors``, ``generation_config.json``
        (stopping at the end of the turn), the tokenizer with the chat template and
        ``preprocessor_config.json``; ``AutoModelForImageTextToText`` and vLLM read it. ``state_dict``
        overrides the live weights (a full state gathered from FSDP shards)."""
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
    def _parts_from(cls, directory: Path, image_processor: dict | None, weights: bool, dtype=None):
        import transformers

        hf_class = getattr(transformers, cls.hf_class)
        if weights:
            hf = hf_class.from_pretrained(str(directory), dtype=dtype or torch.float32)
        else:
            hf = hf_class._from_config(transformers.AutoConfig.from_pretrained(str(directory)))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
        return hf, tokenizer, load_image_processor(directory, **(image_processor or {}))

    @classmethod
    def from_folder_config(
        cls, directory: str | Path, *, image_processor: dict | None = None, system_prompt: str | None = SYSTEM_PROMPT
    ) -> HubVLM:
        """The folder's model with fresh (uninitialised) weights: built under ``torch.device("meta")``,
        shapes without memory, for a dry run."""
        return cls(*cls._parts_from(Path(directory), image_processor, weights=False), system_prompt=system_prompt)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        image_processor: dict | None = None,
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> HubVLM:
        """A folder of the family (the Hub's, or one this class saved), in eval mode and in ``dtype``
        (float32 when None). ``image_processor``: settings over the saved ones."""
        parts = cls._parts_from(Path(directory), image_processor, weights=True, dtype=dtype)
        model = cls(*parts, system_prompt=system_prompt)
        if device is not None:
            model.to(device)
        return model.eval()
