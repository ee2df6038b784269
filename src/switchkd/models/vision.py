"""Vision tower: any Hugging Face vision encoder, one hidden layer out, CLS dropped where present."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from switchkd.config import require_folder

# Encoders whose sequence starts with a CLS token. Unknown encoders are probed once at build time.
_HAS_CLS = {"clip_vision_model": True, "siglip_vision_model": False}

# Full two-tower folders (e.g. openai/clip-vit-large-patch14-336) whose vision half we take.
_VISION_OF = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def load_vision_encoder(source: str | dict, attn_implementation: str = "sdpa", dtype=None) -> nn.Module:
    """An encoder from a local folder (weights loaded) or a config dict (fresh weights)."""
    if isinstance(source, dict):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ValueError("vision config dict needs a `model_type`, e.g. clip_vision_model")
        config = AutoConfig.for_model(_VISION_OF.get(model_type, model_type), **fields)
        config._attn_implementation = attn_implementation
        return AutoModel.from_config(config, dtype=dtype)
    source = str(require_folder(source, "vision"))
    config = AutoConfig.from_pretrained(source)
    if config.model_type in _VISION_OF:
        # A full CLIP/SigLIP folder: its vision model class loads the ``vision_model.*`` weights.
        from transformers import CLIPVisionModel, SiglipVisionModel

        cls = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}[config.model_type]
        return cls.from_pretrained(source, attn_implementation=attn_implementation, dtype=dtype)
    return AutoModel.from_pretrained(source, attn_implementation=attn_implementation, dtype=dtype)


def encoder_config(folder: str) -> PretrainedConfig:
    """The vision encoder's config in ``folder``: the vision half of a full CLIP/SigLIP folder."""
    config = AutoConfig.from_pretrained(folder)
    return config.vision_config if config.model_type in _VISION_OF else config


class VisionTower(nn.Module):
    """Wraps an encoder; ``forward(pixel_values (B, 3, H, W)) -> (B, N_img, D_v)``."""

    def __init__(self, encoder: nn.Module, feature_layer: int = -2, drop_cls: bool | None = None):
        super().__init__()
        self.encoder = encoder
        self.feature_layer = feature_layer
        if getattr(encoder, "use_head", False):
            # SigLIP's attention-pooling head feeds nothing we read (the features are a hidden layer) but
            # cost 2 s and 1 GB a step at 384 px on the CPU in bf16. Its weights stay, unused, so folders
            # load and save unchanged.
            encoder.use_head = False
        cfg = self.config
        if not hasattr(cfg, "image_size") or not hasattr(cfg, "patch_size"):
            raise ValueError(f"vision encoder config {type(cfg).__name__} lacks image_size/patch_size")
        has_cls = _HAS_CLS.get(cfg.model_type)
        if has_cls is None:
            has_cls = self._probe_has_cls()
        self.has_cls = has_cls
        self.drop_cls = has_cls if drop_cls is None else drop_cls
        if self.drop_cls and not has_cls:
            raise ValueError(f"drop_cls=true but {cfg.model_type} has no CLS token")

    @property
    def config(self) -> PretrainedConfig:
        return self.encoder.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + int(self.has_cls and not self.drop_cls)

    @torch.no_grad()
    def _probe_has_cls(self) -> bool:
        size = self.config.image_size
        dtype = next(self.encoder.parameters()).dtype
        out = self.encoder(pixel_values=torch.zeros(1, 3, size, size, dtype=dtype), output_hidden_states=True)
        n = out.hidden_states[-1].shape[1]
        if n not in (self.num_patches, self.num_patches + 1):
            raise ValueError(f"cannot tell the token layout of {self.config.model_type}: {n} tokens")
        return n == self.num_patches + 1

    def unused_parameter_names(self) -> list[str]:
        """Parameters that cannot affect the selected features (layers after ``feature_layer``, the
        final norm, pooling heads), found exactly by one probe backward pass."""
        params = dict(self.encoder.named_parameters())
        size = self.config.image_size
        dtype = next(self.encoder.parameters()).dtype
        with torch.enable_grad():
            flags = {n: p.requires_grad for n, p in params.items()}
            for p in params.values():
                p.requires_grad_(True)
            try:
                feats = self(torch.zeros(1, 3, size, size, dtype=dtype, device=next(self.parameters()).device))
                grads = torch.autograd.grad(feats.float().sum(), list(params.values()), allow_unused=True)
            finally:
                for n, p in params.items():
                    p.requires_grad_(flags[n])
        return [n for n, g in zip(params, grads) if g is None]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.encoder.parameters()).dtype
        out = self.encoder(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]  # (B, N(+1), D_v)
        return feats[:, 1:] if self.drop_cls else feats
