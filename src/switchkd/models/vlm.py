"""The vision-language model: vision tower -> projector -> causal LLM.

Image placeholders are expanded at tokenisation time: a sample with one image carries exactly
``model.num_image_tokens`` copies of the image token id, so lengths, padding and attention masks
are known before the forward pass, and merging is a masked scatter in reading order.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from switchkd import __version__
from switchkd.config import ConfigError, ModelConfig, from_dict, require_folder, to_dict
from switchkd.data.images import SquareImages
from switchkd.data.templates import ChatTemplate, get_template
from switchkd.models.builders import build_components
from switchkd.models.generation import GenerationConfig, generate
from switchkd.models.inputs import merge_image_features, position_ids_from_mask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# sha256 of the weights file, written beside it; other tools ignore it, switchkd checks it when present
CHECKSUM_NAME = "model.safetensors.sha256"


@dataclass
class VLMOutput:
    logits: torch.Tensor | None
    """(B, T, V) for ``logits_at="all"``; (B, n, V) for an int; (M, V) for a boolean mask."""
    last_hidden_state: torch.Tensor
    """(B, T, D) final hidden states of the LLM."""
    past_key_values: Any = None


def embed_with_images(llm: nn.Module, input_ids: torch.Tensor, image_features, image_token_id: int) -> torch.Tensor:
    """The LLM's input embeddings with the image features at the image tokens, in reading order."""
    # The image token may lie outside the embedding table; it is overwritten anyway.
    safe_ids = input_ids.masked_fill(input_ids == image_token_id, 0)
    return merge_image_features(llm.get_input_embeddings()(safe_ids), input_ids, image_features, image_token_id)


def run_llm(
    llm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_features: torch.Tensor | None,
    image_token_id: int,
    *,
    position_ids: torch.Tensor,
    past_key_values: Any = None,
    use_cache: bool = False,
    logits_at: str | int | torch.Tensor | None = "all",
    **llm_kwargs,
) -> VLMOutput:
    """L: the LLM (``get_input_embeddings``, ``get_decoder``, ``get_output_embeddings``) over the prompt with
    the image features in place, on the given positions; logits only where asked (``logits_at``)."""
    embeds = embed_with_images(llm, input_ids, image_features, image_token_id)
    decoder = llm.get_decoder()
    if past_key_values is not None:  # transformers >= 5.24 calls it `cache` (and warns on the old name)
        llm_kwargs[_cache_argument(type(decoder))] = past_key_values
    out = decoder(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=use_cache,
        **llm_kwargs,
    )
    hidden = out.last_hidden_state  # (B, T, D)
    return VLMOutput(head_logits(llm.get_output_embeddings(), hidden, logits_at), hidden, output_cache(out))


def head_logits(head: nn.Module, hidden: torch.Tensor, where: str | int | torch.Tensor | None) -> torch.Tensor | None:
    """Apply the LM head only where logits are needed (a 576-token image needs none): ``where`` is
    "all", an int (the last n positions), a (B, T) bool mask (gives (M, V)) or None (no logits)."""
    if where is None:
        return None
    if isinstance(where, str):
        if where != "all":
            raise ValueError(f"logits_at must be 'all', an int, a mask or None, got {where!r}")
        return head(hidden)
    if isinstance(where, int):
        return head(hidden[:, -where:])
    return head(hidden[where])  # (M, V)


def output_cache(out) -> Any:
    """The KV cache a decoder returned: ``cache`` from transformers 5.24 on (whose outputs warn when
    read by the old name), ``past_key_values`` before; None without one."""
    for name in ("cache", "past_key_values"):
        if name in out.keys():  # the keys as stored: reading a missing new name maps it to the old and warns
            return out[name]
    return None


def enable_checkpointing(module: nn.Module) -> None:
    """Per-layer, non-reentrant activation checkpointing in a transformers model (nothing for a module
    that has none). transformers v5 renamed the switch (the old name warns); both take the checkpoint's
    keywords first."""
    enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
        module, "gradient_checkpointing_enable", None
    )
    if enable is not None:
        enable({"use_reentrant": False})


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    """The keyword a decoder's ``forward`` takes its KV cache by: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


class VisionLanguageModel(nn.Module):
    """``vision_tower`` (V), ``projector`` (P) and ``llm`` (L), reachable by name: the LLaVA-style
    family (the paper's TinyLLaVA composition, and LLaVA-1.5 folders), one implementation of the
    pathway interface (``switchkd.models.pathway``).

    The model owns its chat template (``template``, from ``config.chat_template`` and
    ``config.system_prompt``): data, generation and prediction all render prompts with it, and its
    Jinja form is written into the tokenizer so ``apply_chat_template`` agrees.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        vision_tower: nn.Module,
        projector: nn.Module,
        llm: nn.Module,
        tokenizer,
        image_processor,
    ):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.projector = projector
        self.llm = llm
        self.template: ChatTemplate = get_template(config.chat_template, config.system_prompt)
        tokenizer.chat_template = self.template.jinja()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = self._image_token_id()
        self.num_image_tokens = projector.num_output_tokens(vision_tower.num_tokens)
        self._check_shapes()

    # ---- construction checks ------------------------------------------------------------------

    def _image_token_id(self) -> int:
        token = self.config.image_token
        ids = self.tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token {token!r}; set model.image_token to one it has")
        return int(ids[0])

    def _check_shapes(self) -> None:
        if self.projector.in_dim != self.vision_tower.hidden_size:
            raise ValueError(
                f"projector input width {self.projector.in_dim} != vision width {self.vision_tower.hidden_size}"
            )
        llm_width = self.llm.get_input_embeddings().embedding_dim
        if self.projector.out_dim != llm_width:
            raise ValueError(f"projector output width {self.projector.out_dim} != LLM width {llm_width}")
        rows = self.llm.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the LLM embeds only {rows}")

    family = "llava"
    image_wrap: tuple[list[int], list[int]] = ([], [])  # nothing around an image's tokens

    # ---- properties -----------------------------------------------------------------------------

    @property
    def image_reader(self) -> SquareImages:
        """How this model reads an image: padded to a square, one resolution, ``num_image_tokens``."""
        return SquareImages(self.image_processor, self.num_image_tokens)

    def parts(self) -> dict[str, nn.Module]:
        """The trainable parts by the names stages and LoRA use."""
        return {"vision": self.vision_tower, "projector": self.projector, "llm": self.llm}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer can produce; logits rows beyond this are padding (Qwen pads to 64)."""
        return len(self.tokenizer)

    @property
    def lm_head(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    # ---- forward --------------------------------------------------------------------------------

    def encode_vision(self, pixel_values: torch.Tensor, **shapes) -> torch.Tensor:
        """V(x): (N, 3, H, W) -> (N, vision tokens, D_vision), the features before the projector."""
        return self.vision_tower(pixel_values)

    def project(self, features: torch.Tensor, images: dict | None = None) -> torch.Tensor:
        """P(V): (N, vision tokens, D_vision) -> (N, num_image_tokens, D_llm). ``images`` is for the
        interface's sake (families whose projection depends on each image's shape)."""
        return self.projector(features)

    def encode_images(self, pixel_values: torch.Tensor, **shapes) -> torch.Tensor:
        """P(V(x)): (N, 3, H, W) -> (N, num_image_tokens, D_llm)."""
        return self.project(self.encode_vision(pixel_values))

    def position_ids(self, input_ids, attention_mask, **shapes) -> torch.Tensor:
        """(B, T) positions counting attended tokens only (left padding does not shift them)."""
        return position_ids_from_mask(attention_mask)

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return embed_with_images(self.llm, input_ids, image_features, self.image_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_at: str | int | torch.Tensor | None = "all",
        **llm_kwargs,
    ) -> VLMOutput:
        """Run the VLM.

        ``image_features`` (already projected) replaces ``pixel_values``; distillation uses it to
        feed one model's vision features through another model's projector and LLM. ``image_grid_thw`` and
        ``image_sizes`` are for the pathway interface's sake; this family's images have one size.
        ``logits_at``: "all", an int (last n positions), a (B, T) bool mask (returns (M, V)), or
        None for hidden states only.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        return run_llm(
            self.llm,
            input_ids,
            attention_mask,
            image_features,
            self.image_token_id,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_at=logits_at,
            **llm_kwargs,
        )

    def logits_at(self, hidden: torch.Tensor, where: str | int | torch.Tensor | None) -> torch.Tensor | None:
        return head_logits(self.lm_head, hidden, where)

    def generate(self, input_ids, attention_mask=None, *, pixel_values=None, **kwargs) -> torch.Tensor:
        """New tokens after the prompt, greedy or sampled with a KV cache; ``kwargs`` are
        ``GenerationConfig`` fields (see ``switchkd.models.generation``)."""
        return generate(self, input_ids, attention_mask, pixel_values=pixel_values, cfg=GenerationConfig(**kwargs))

    def gradient_checkpointing_enable(self) -> None:
        for module in (self.llm, self.vision_tower.encoder):
            enable_checkpointing(module)

    # ---- save / load ----------------------------------------------------------------------------

    def resolved_config(self) -> ModelConfig:
        """The config with every component written out, so the folder needs nothing else."""
        cfg = copy.deepcopy(self.config)
        return dataclasses.replace(
            cfg,
            vision=self.vision_tower.config.to_dict(),
            llm=self.llm.config.to_dict(),
            drop_cls=self.vision_tower.drop_cls,
            tokenizer=None,
            image_processor=None,
            pretrained=None,
        )

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """config.json + model.safetensors + tokenizer + preprocessor_config.json.

        ``state_dict`` overrides the live weights (e.g. a full state gathered from FSDP shards).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # transformers_version: without it, loading this folder's tokenizer (a Qwen vocabulary) warns of a
        # Mistral regex it does not have. No model_type: transformers knows none for this folder.
        meta = {
            "transformers_version": transformers.__version__,
            "switchkd_version": __version__,
            "model": to_dict(self.resolved_config()),
        }
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str))
        if state_dict is None:
            save_model(self, str(directory / WEIGHTS_NAME))  # drops tied duplicates (Qwen's lm_head)
        else:
            live = self.state_dict(keep_vars=True)
            first_of: dict[int, str] = {}
            keep = {}
            for name, tensor in live.items():  # one name per parameter (tied weights), as save_model keeps
                if first_of.setdefault(id(tensor), name) == name:
                    keep[name] = state_dict[name].detach().contiguous().cpu()
            save_file(keep, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / CHECKSUM_NAME).write_text(f"{file_sha256(directory / WEIGHTS_NAME)}  {WEIGHTS_NAME}\n")
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, fresh_weights: bool = True, dtype=None) -> VisionLanguageModel:
        """Assemble from component folders or config dicts. ``fresh_weights=False`` skips random
        initialisation of weights that are about to be loaded."""
        parts = build_components(cfg, fresh_weights=fresh_weights, dtype=dtype)
        return cls(cfg, **vars(parts))  # the fields of Components are the constructor's keywords

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> VisionLanguageModel:
        """A folder written by ``save_pretrained``, in eval mode."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model folder not found: {directory}")
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} is not a switchkd model folder (no {CONFIG_NAME})")
        meta = json.loads(cfg_path.read_text())
        if "model" not in meta:
            raise ValueError(f"{cfg_path} is not a switchkd config (no 'model' section)")
        config = from_dict(ModelConfig, meta["model"])
        config.tokenizer = str(directory)
        config.image_processor = str(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
        verify_checksum(weights, directory / CHECKSUM_NAME)
        model = cls.from_config(config, fresh_weights=False, dtype=dtype)  # built in dtype: no float32 copy first
        try:
            load_model(model, str(weights), strict=True)
        except (SafetensorError, RuntimeError) as exc:  # a damaged file, or tensors this config does not have
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{weights}: cannot be loaded ({first})") from None
        model.config.tokenizer = model.config.image_processor = None
        if dtype is not None:
            model.to(dtype)  # what the builders left in float32 (buffers, a projector's norm)
        if device is not None:
            model.to(device)
        return model.eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(weights: Path, manifest: Path) -> None:
    """One line when ``weights`` differs from the checksum ``save_pretrained`` wrote beside it (a file
    damaged or changed since); nothing to check where there is no manifest (folders from other tools)."""
    if not manifest.is_file():
        return
    want = manifest.read_text().split()[:1]
    if not want or file_sha256(weights) != want[0]:
        raise ValueError(
            f"{weights}: does not match its checksum in {manifest.name} (damaged or changed since it was "
            f"saved; delete {manifest.name} to load it anyway)"
        )


def build_vlm(cfg: ModelConfig, fresh_weights: bool = True, dtype=None, *, section: str = "model"):
    """A VLM from a ``ModelConfig``: a saved folder of any family (``pretrained``: switchkd's own, or a
    Qwen2.5-VL folder) or the LLaVA-style family's components. ``section`` names the config section in
    errors (``teacher.pretrained: local folder not found``)."""
    from switchkd.models.pathway import load_vlm

    try:
        if cfg.pretrained is not None:
            folder = require_folder(cfg.pretrained, "pretrained")
            overrides = cfg.image_processor if isinstance(cfg.image_processor, dict) else None
            return load_vlm(folder, dtype=dtype, image_processor=overrides)
        return VisionLanguageModel.from_config(cfg, fresh_weights=fresh_weights, dtype=dtype)
    except ConfigError as exc:
        raise exc.under(section) from None
