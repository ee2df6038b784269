"""The run configuration, every section in one place: ``model`` and ``teacher`` (ModelConfig), ``data``
(DataConfig), ``train`` (TrainConfig, with ``lora``: LoraSettings) and ``distill`` (DistillConfig,
with ``loss``: the loss and its options, ``switchkd.losses.DistillLoss``). ``switchkd config --show``
prints them with their defaults and the documentation under each field.

    cfg = load_config("configs/paper/dft_siglip_qwen2.5-0.5b_from_3b.yaml", ["train.lr=1e-5"])
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from switchkd.config.core import ConfigError, field_default, from_dict, read_config, to_dict
from switchkd.losses import DistillLoss

PARTS = ("vision", "projector", "llm")
"""The parts of a VLM that a stage trains or freezes."""

STAGES: dict[str, dict] = {
    "pt": {"trainable": {"vision": False, "projector": True, "llm": False}, "teacher": False},
    "dpt": {"trainable": {"vision": False, "projector": True, "llm": False}, "teacher": True},
    "sft": {"trainable": {"vision": True, "projector": True, "llm": True}, "teacher": False},
    "dft": {"trainable": {"vision": True, "projector": True, "llm": True}, "teacher": True},
}
"""pt: projector only, no teacher; dpt: pt with the distillation terms (Table 5); sft: everything, no
teacher (the baseline); dft: everything, with the visual-switch distiller (Table 2)."""


@dataclass
class ModelConfig:
    """How one VLM (vision tower -> projector -> LLM) is assembled."""

    vision: str | dict | None = None
    """Vision encoder: a local Hugging Face folder (CLIP, SigLIP or any AutoModel vision encoder),
    or a dict of config fields with ``model_type`` (e.g. ``clip_vision_model``) for a fresh model."""
    llm: str | dict | None = None
    """Causal LLM: a local Hugging Face folder, or a dict of config fields with ``model_type``."""
    projector: str = "mlp2x_gelu"
    """Projector by exact name: mlp2x_gelu, ldpv2, identity."""
    projector_kwargs: dict = field(default_factory=dict)
    """Extra projector arguments, e.g. ``{grid: 12}`` for ldpv2."""
    vision_feature_layer: int = -2
    """Hidden-state index taken from the vision encoder (-2: the penultimate layer, as LLaVA)."""
    drop_cls: bool | None = None
    """Drop the encoder's CLS token; null decides from the encoder (CLIP has one, SigLIP none)."""
    tokenizer: str | None = None
    """Tokenizer folder; null uses the LLM folder's."""
    image_processor: str | dict | None = None
    """Image processor folder, or a dict of settings; null uses the vision folder's, or builds one
    matching the vision config (CLIP or SigLIP normalisation)."""
    image_token: str = "<|image_pad|>"
    """Placeholder token that stands for one image token in ``input_ids``."""
    chat_template: str = "chatml"
    """Chat template by name (see ``switchkd.data.templates``)."""
    system_prompt: str | None = "You are a helpful assistant."
    """System line of the chat template; null for none."""
    attn_implementation: str = "sdpa"
    """Attention kernel for the LLM and the vision encoder: sdpa, eager, flash_attention_2."""
    pretrained: str | None = None
    """A saved model folder: switchkd's own, or a Qwen2.5-VL folder (the family is read from its
    config.json); when set, everything above comes from it, except ``image_processor`` settings for a
    Qwen2.5-VL folder (``{min_pixels: 200704, max_pixels: 1003520}``)."""

    def __post_init__(self) -> None:
        if self.pretrained is None and (self.vision is None or self.llm is None):
            raise ConfigError("give either `pretrained` or both `vision` and `llm`", key="pretrained")
        if self.projector_kwargs is None:
            self.projector_kwargs = {}
        if self.pretrained is not None:
            # a saved model brings every field with it: a value set beside it would be dropped unseen
            for f in fields(self):
                if f.name == "image_processor" and isinstance(self.image_processor, dict):
                    continue  # settings over a grid-reading family's saved processor (checked at load)
                if f.name != "pretrained" and getattr(self, f.name) != field_default(f):
                    raise ConfigError(
                        f"cannot apply to a pretrained model, which keeps what its config.json says "
                        f"({self.pretrained}); remove the key, or build the model from `vision` and `llm`",
                        key=f.name,
                    )


def load_model_config(path: str | Path | None, overrides: list[str] | None = None) -> ModelConfig:
    """A ``ModelConfig`` from a file's ``model:`` section (or a file of only model keys) and
    ``model.key=value`` overrides (the ``model.`` prefix may be left out)."""
    overrides = [o if o.startswith("model.") else f"model.{o}" for o in overrides or []]
    data = read_config(path, overrides, section="model")
    if "model" not in data:
        raise ConfigError("give a config file with a `model:` section, or model.* overrides")
    return from_dict(ModelConfig, data["model"], prefix="model.")


@dataclass
class DataConfig:
    train: str | None = None
    """LLaVA-format JSON or JSONL with the training records."""
    image_root: str | None = None
    """Folder that record image paths are relative to; null uses the data file's folder."""
    max_length: int = 2048
    """Tokens per sample; longer samples are cut after their image tokens (or skipped)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad samples: raise (stop with a message naming the record) or skip (count and report)."""
    num_workers: int = 2
    """DataLoader worker processes."""
    cache: bool = False
    """Keep every sample (token ids, pixels) in memory after its first load: for a small data set read for
    several epochs, which then skips tokenising and image decoding after the first (the demo's teacher
    reads its 1,600 records 9 times). Needs num_workers: 0; the memory is the whole data set's tensors."""
    length_grouped: bool = True
    """Batch samples of similar length together (less padding)."""
    padding_side: Literal["left", "right"] = "right"
    """Where the collator pads (results are the same either way)."""
    control_tokens: Literal["split", "reject"] = "split"
    """Control tokens typed in record text (<|im_end|>, <|image_pad|>): split (tokenized as plain text)
    or reject (the record is an error, or a skip with on_error=skip)."""

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ConfigError("must be >= 1", key="max_length")
        if self.num_workers < 0:
            raise ConfigError("must be >= 0", key="num_workers")
        if self.cache and self.num_workers:
            raise ConfigError(
                "needs num_workers: 0 (each DataLoader worker would cache a copy of its own, lost at each epoch)",
                key="cache",
            )

    @property
    def resolved_image_root(self) -> str | None:
        if self.image_root is not None or self.train is None:
            return self.image_root
        return str(Path(self.train).parent)


LLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class LoraSettings:
    """Low-rank adapters (peft, the ``lora`` extra) instead of full weights for the student's LLM and,
    optionally, its vision tower; the projector still trains fully. Step checkpoints hold the adapters
    (resume restores them); ``final/`` holds the merged model, an ordinary switchkd folder."""

    rank: int = 0
    """LoRA rank r; 0 turns LoRA off (full fine-tuning)."""
    alpha: float = 16.0
    """Scale alpha (the update is alpha / r * B A)."""
    dropout: float = 0.05
    """Dropout on the adapters' input during training."""
    target_modules: list = field(default_factory=lambda: list(LLM_LORA_TARGETS))
    """Linear layers of the LLM that get adapters (Qwen2 names)."""
    vision: bool = False
    """Adapters in the vision tower too (its layers up to the feature layer), instead of training it fully."""
    vision_target_modules: list = field(default_factory=lambda: list(VISION_LORA_TARGETS))
    """Linear layers of the vision tower that get adapters when ``vision`` is true (CLIP/SigLIP names)."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ConfigError("must be >= 0 (0: off)", key="lora.rank")
        if self.rank and not self.target_modules:
            raise ConfigError("needs at least one module name", key="lora.target_modules")


@dataclass
class TrainConfig:
    stage: str = "dft"
    """pt (projector only), dpt (pt with distillation), sft (no teacher), dft (distilled fine-tuning)."""
    trainable: dict = field(default_factory=dict)
    """Override which parts train, e.g. {vision: false}; defaults come from the stage."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA for the trainable LLM (and optionally vision tower): ``lora: {rank: 16, alpha: 32}``."""
    output_dir: str = "runs/train"
    """The run's folder: config.yaml, log.jsonl, checkpoints/, final/ (a run owns it: see --resume, --overwrite)."""
    lr: float = 2e-5
    """Peak learning rate (paper: PT 1e-3, DFT 2e-5)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms); the paper does not say, LLaVA uses 0."""
    epochs: float = 1.0
    """Passes over the data (fractions allowed); the paper: 1."""
    max_steps: int | None = None
    """Optimizer steps; overrides epochs when set."""
    per_device_batch_size: int = 4
    """Samples per process per micro-batch (the paper's global batch: PT 256, DFT 128, e.g. 8 GPUs x 16)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; global batch = per_device_batch_size x grad_accum x processes."""
    warmup_ratio: float = 0.03
    """Fraction of the steps with a linear warm-up from 0 (the paper: 0.03)."""
    scheduler: Literal["cosine", "constant"] = "cosine"
    """cosine (with linear warm-up) or constant (with warm-up)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (null: no clipping)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """no, bf16 or fp16 (autocast where the device supports it)."""
    gradient_checkpointing: bool = False
    """Recompute student activations in backward."""
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """ddp, fsdp or deepspeed when launched on several processes. fsdp: torch's FSDP2, applied by switchkd
    to every transformer block and the rest of the student and the frozen teacher (CPU/gloo or GPU/NCCL;
    bf16 mixed precision as a parameter-dtype policy, gradients reduced in float32). deepspeed: ZeRO (see
    zero_stage) through accelerate, GPUs only."""
    fsdp_cpu_offload: bool = False
    """fsdp on GPUs: keep the sharded parameters, gradients and optimizer state in CPU memory."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage (the paper: 2)."""
    seed: int = 0
    """Seeds initialisation, data order and dropout; the same seed, code, torch build and thread count
    give the same run bit for bit."""
    save_every: int | None = None
    """Write a resumable checkpoint every N optimizer steps (and always at the end)."""
    save_total_limit: int | None = 2
    """Keep at most this many step checkpoints (the final model is always kept)."""
    log_every: int = 1
    """Write a log.jsonl record every N optimizer steps (and at the last)."""
    diagnostics_every: int = 0
    """Every N steps (a multiple of log_every; 0: never), log what moves the vision tower: the gradient
    norm that each loss term alone sends into it (``grad_vision_ce``/``_align``/``_vsd``) and, with a
    teacher, the relative distance of the student's and teacher's encoder features
    (``feature_distance``). One extra forward and backward per term at those steps; training itself is
    unchanged. One process or DDP only (sharded parameters cannot be differentiated one term at a time)."""
    tensorboard: bool = False
    """Also log to TensorBoard under output_dir (the ``tensorboard`` extra)."""
    progress: bool = True
    """Show a progress bar."""
    loss_head: Literal["fused", "plain"] = "fused"
    """fused: each chunk of rows' logits, loss terms and gradients are computed and dropped before the
    next (no M x V tensor ever exists); plain: the autograd graph keeps every chunk's logits until
    backward. Same values and gradients (losses/head.py)."""
    compile: bool = False
    """Run the fused head's per-chunk loss (logits -> knee -> pairs / KL -> gradients) under
    ``torch.compile`` as one graph (the synchronisation-free path: a full-sort knee, masked pair sums
    over the whole row). Off by default: on the CPU it is slower than the eager pruned knee
    (``benchmarks/bench_losses.py --compile``); it is meant for GPUs, where it is not yet measured."""
    loss_chunk_rows: int | None = None
    """Supervised rows per loss-head chunk (null: chosen per device for the fused head, all rows at once
    for the plain one); the result does not depend on it."""
    teacher_dtype: Literal["compute", "float32"] = "compute"
    """The frozen teacher's weights under bf16/fp16 mixed precision: compute (cast once to that dtype: it
    has no master weights to keep, half the memory) or float32. Without mixed precision: float32."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"must be one of {', '.join(STAGES)}, got {self.stage!r}", key="stage")
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ConfigError(f"unknown part(s) {sorted(unknown)}; valid: {', '.join(PARTS)}", key="trainable")
        for key in ("per_device_batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError("must be >= 1", key=key)
        if self.diagnostics_every < 0 or self.diagnostics_every % self.log_every:
            raise ConfigError(
                f"must be 0 or a multiple of log_every ({self.log_every}), got {self.diagnostics_every}",
                key="diagnostics_every",
            )
        for key in ("max_steps", "save_every", "save_total_limit", "loss_chunk_rows"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError("must be >= 1, or null", key=key)
        if self.lr <= 0 or self.epochs <= 0:
            raise ConfigError("must be > 0", key="lr" if self.lr <= 0 else "epochs")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("must be in [0, 1)", key="warmup_ratio")


@dataclass
class DistillConfig:
    """The Switch-KD objective."""

    loss: DistillLoss = field(default_factory=DistillLoss)
    """The distillation loss and its options (``loss: dbild_rkl`` or ``loss: {name: ..., temperature: ...}``)."""
    lambda_align: float = 1.0
    """λ1: weight of D(z^T, z^S), the standard alignment pathway."""
    lambda_vsd: float = 1.0
    """λ2: weight of D(z^T, z^Switch), the visual-switch pathway."""
    visual_switch: bool = True
    """Run the visual-switch pathway (paper Table 3 ablation when false)."""
    ce_weight: float = 1.0
    """Weight of the plain LM cross-entropy (temperature 1, see DESIGN.md)."""
    switch_adapter: Literal["auto", "linear", "mlp2x_gelu", "none"] = "auto"
    """How the student's vision features reach the teacher projector: auto (a linear adapter when the
    vision widths or patch grids differ, none when they match), linear, mlp2x_gelu, or none (the paper:
    the pair must match). The adapter trains with L_VSD and is not part of the exported student."""
    switch_resample: Literal["interpolate", "pool"] = "interpolate"
    """How the adapter maps the student's patch grid onto the teacher's: interpolate (bilinear) or pool."""
    teacher_checkpointing: bool = False
    """Recompute the switch pathway's teacher layers in backward, one decoder layer at a time, instead of
    storing their activations (only each layer's input is kept)."""

    def __post_init__(self) -> None:
        for key in ("lambda_align", "lambda_vsd", "ce_weight"):
            if getattr(self, key) < 0:
                raise ConfigError("loss weights must be >= 0", key=key)


@dataclass
class Config:
    model: ModelConfig
    """The student (or the only model, for pt/sft)."""
    teacher: ModelConfig | None = None
    """The frozen teacher, for dpt/dft."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training records and how they are read and batched."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The stage, optimisation, precision, parallelism, checkpoints and logging."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """The Switch-KD objective (dpt/dft): the loss, the λ weights, the visual switch."""

    def __post_init__(self) -> None:
        if self.data.train is None:
            raise ConfigError("give the training data file (LLaVA JSON or JSONL)", key="data.train")
        if STAGES[self.train.stage]["teacher"] and self.teacher is None:
            raise ConfigError(f"train.stage={self.train.stage} distills: give a `teacher:` section", key="teacher")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """A run config from a YAML file and dotted overrides (``train.lr=2e-5``), validated."""
    data = read_config(path, overrides)
    if "model" not in data:
        raise ConfigError("config needs a `model:` section")
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
