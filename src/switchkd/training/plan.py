"""The memory of one training step per GPU, before launching: ``switchkd plan``.

    switchkd plan --config configs/paper/dft_siglip_qwen2.5-0.5b_from_3b.yaml --gpus 8 --gpu-memory 80GB

Arithmetic over the models' shapes (built on the meta device: no weights are read) and the run config:
weights, gradients and AdamW state of the student per engine (DDP keeps them whole with a gradient
bucket copy; ZeRO-2 shards gradients and optimizer state; FSDP shards all three, and the frozen
teacher's weights, and gathers the root unit and two blocks whole while they run), the frozen teacher,
the activations each pathway keeps (the student's and the switch pathway's per-layer inputs under
checkpointing, one layer recomputed at a time), and the fused loss head (a rounded block of each head
weight, one chunk's logits, their gradients and the knee's sort). The step's peak is the larger of
two phases: the loss head (activations saved, head temporaries, the head's weight gradient) and the
backward pass (every gradient, one layer recomputed). It was checked against the live-tensor peaks
that ``benchmarks/bench_step.py`` measures on the CPU at the paper's widths (docs/scale.md), where the
same tensors exist; a GPU adds its CUDA context (about 0.5 GB) outside the allocator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from switchkd.config import Config, ConfigError
from switchkd.losses.head import auto_chunk_rows, block_rows
from switchkd.training.sharding import units
from switchkd.training.stages import STAGES, trainable_parts

GB = 1 << 30
MAX_BATCH = 128  # the largest per-GPU batch ``fit`` tries
ENGINES = ("ddp", "zero2", "fsdp")
RUNTIME = {"cpu": 0.6 * GB, "cuda": 0.5 * GB}
"""Memory a process holds besides tensors: on the CPU the libraries, tokenizer and data (measured: the
resident size of bench_step's SFT process before its step, less its weights and optimizer state, 2.73 -
2.12 GB, with freed blocks returned to the system); on a GPU the CUDA context, which the allocator does
not see."""


@dataclass(frozen=True)
class Shapes:
    """What the arithmetic needs of one VLM."""

    params: int
    vision_params: int
    projector_params: int
    vocab_rows: int  # rows of the LM head (padded vocabulary)
    vocab: int  # logits used (the tokenizer's size)
    hidden: int
    intermediate: int
    layers: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_tokens: int  # per image, before the projector
    image_tokens: int  # per image, after it
    root_params: int = 0  # outside every transformer block: what FSDP's root unit gathers
    block_params: int = 0  # the largest transformer block: one FSDP unit


def shapes_of(model) -> Shapes:
    llm, tower = model.llm.config, model.vision_tower
    vision = tower.config
    root, block = units(model)
    image_tokens, vision_tokens = model.num_image_tokens, tower.num_tokens
    if image_tokens is None:  # tokens differ per image: sized for the largest image the processor lets through
        image_tokens = model.image_reader.max_tokens
        vision_tokens = model.image_reader.max_vision_tokens
    return Shapes(
        params=sum(p.numel() for p in model.parameters()),
        vision_params=sum(p.numel() for p in model.vision_tower.parameters()),
        projector_params=sum(p.numel() for p in model.projector.parameters()),
        vocab_rows=model.lm_head.weight.shape[0],
        vocab=model.vocab_size,
        hidden=llm.hidden_size,
        intermediate=llm.intermediate_size,
        layers=llm.num_hidden_layers,
        vision_hidden=vision.hidden_size,
        vision_intermediate=vision.intermediate_size,
        vision_layers=getattr(vision, "num_hidden_layers", None) or vision.depth,
        vision_tokens=vision_tokens,
        image_tokens=image_tokens,
        root_params=root,
        block_params=block,
    )


def layer_bytes(hidden: int, intermediate: int) -> int:
    """Bytes per token one decoder (or encoder) layer keeps for backward under bf16 autocast: the
    float32 inputs of its two norms, the bf16 casts and outputs of its projections, the attention
    output, the MLP's gate, up and product (about 24 H + 10 I)."""
    return 24 * hidden + 10 * intermediate


@dataclass
class StepPlan:
    """Per-GPU bytes of one step, by component, and the peak."""

    parts: dict[str, float]
    head_phase: float
    backward_phase: float
    runtime: float

    @property
    def peak(self) -> float:
        return self.runtime + max(self.head_phase, self.backward_phase)

    def table(self) -> str:
        rows = [f"| {name} | {value / GB:,.2f} |" for name, value in self.parts.items()]
        rows += [
            f"| runtime (not tensors) | {self.runtime / GB:,.2f} |",
            f"| **peak** (loss head {self.head_phase / GB:,.2f}, backward {self.backward_phase / GB:,.2f}) | "
            f"**{self.peak / GB:,.2f}** |",
        ]
        return "\n".join(["| per GPU | GB |", "| --- | ---: |", *rows])


@dataclass(frozen=True, kw_only=True)
class StepShape:
    """What a step holds besides the models: samples, tokens per sample, supervised rows."""

    batch: int
    tokens: int
    rows: int
    gpus: int = 1
    engine: str = "ddp"
    device: str = "cuda"


def plan_step(cfg: Config, student: Shapes, teacher: Shapes | None, shape: StepShape) -> StepPlan:
    """The memory plan of one step of ``cfg`` on one of ``shape.gpus`` GPUs."""
    if shape.engine not in ENGINES:
        raise ConfigError(f"must be one of {', '.join(ENGINES)}, got {shape.engine!r}", key="engine")
    t, n = cfg.train, shape.gpus
    parts_trained = trainable_parts(t.stage, t.trainable)
    llm_params = student.params - student.vision_params - student.projector_params
    sizes = {"vision": student.vision_params, "projector": student.projector_params, "llm": llm_params}
    trained = sum(size for part, size in sizes.items() if parts_trained[part])
    mixed = t.mixed_precision != "no"
    shard_all = n if shape.engine == "fsdp" else 1
    shard_state = n if shape.engine in ("zero2", "fsdp") else 1
    parts = {
        "student weights (float32)": 4 * student.params / shard_all,
        "AdamW state (2 x float32)": 8 * trained / shard_state,
    }
    if teacher is not None:
        t_bytes = 2 if mixed and t.teacher_dtype == "compute" else 4
        parts[f"teacher weights ({'bf16' if t_bytes == 2 else 'float32'})"] = t_bytes * teacher.params / shard_all
    if shape.engine == "fsdp" and n > 1:  # whole while they run: the root unit, one block and the next
        roots = student.root_params + (teacher.root_params if teacher is not None else 0)
        block = max(student.block_params, teacher.block_params if teacher is not None else 0)
        parts["FSDP: gathered root unit and two blocks"] = (2 if mixed else 4) * (roots + 2 * block)
    persistent = sum(parts.values())  # weights and optimizer state: there before the step and after it
    acts = _activations(cfg, student, teacher, shape)
    parts.update(acts)
    head = _head(cfg, student, teacher, shape)
    parts.update(head)
    grads = 4 * trained / shard_state + (4 * trained if shape.engine == "ddp" and n > 1 else 0)
    parts["student gradients (float32" + (", + DDP buckets)" if shape.engine == "ddp" and n > 1 else ")")] = grads
    saved = sum(v for k, v in acts.items() if k.startswith("saved"))
    recompute = max((v for k, v in acts.items() if k.startswith("recomputed")), default=0.0)
    head_grad = 4 * student.vocab_rows * student.hidden if parts_trained["llm"] else 0
    head_phase = persistent + saved + sum(head.values()) + head_grad
    backward_phase = persistent + saved + recompute + grads
    return StepPlan(parts, head_phase, backward_phase, RUNTIME.get(shape.device, RUNTIME["cuda"]))


def _activations(cfg: Config, student: Shapes, teacher: Shapes | None, shape: StepShape) -> dict:
    t, d = cfg.train, cfg.distill
    tokens = shape.batch * shape.tokens
    out = {}
    patches = shape.batch * student.vision_tokens
    s_layer, v_layer = (
        layer_bytes(student.hidden, student.intermediate),
        layer_bytes(student.vision_hidden, student.vision_intermediate),
    )
    if t.gradient_checkpointing:
        out["saved: student layer inputs (float32)"] = 4 * tokens * student.hidden * student.layers
        out["saved: vision layer inputs"] = 4 * patches * student.vision_hidden * student.vision_layers
        out["recomputed: one student layer"] = tokens * s_layer
    else:
        out["saved: student activations"] = tokens * s_layer * student.layers
        out["saved: vision activations"] = patches * v_layer * student.vision_layers
    if teacher is not None and STAGES[t.stage]["teacher"] and d.visual_switch and d.lambda_vsd > 0:
        t_layer = layer_bytes(teacher.hidden, teacher.intermediate)
        if d.teacher_checkpointing:
            out["saved: switch pathway layer inputs (bf16)"] = 2 * tokens * teacher.hidden * teacher.layers
            out["recomputed: one teacher layer"] = tokens * t_layer
        else:
            out["saved: switch pathway activations"] = tokens * t_layer * teacher.layers
    return out


def _head(cfg: Config, student: Shapes, teacher: Shapes | None, shape: StepShape) -> dict:
    """The loss head's temporaries: its inputs (hidden states at the supervised rows, float32, and their
    gradients), a rounded block of each head weight under mixed precision, one chunk's logits and
    logit gradients per pathway, and the knee's sort of a chunk (GPU: values, int64 order, float64
    distances)."""
    rows, v = shape.rows, student.vocab
    distil = teacher is not None and STAGES[cfg.train.stage]["teacher"]
    widths = [student.hidden] + ([teacher.hidden, teacher.hidden] if distil else [])  # student, teacher, switch
    trained_widths = [student.hidden] + ([teacher.hidden] if distil else [])  # the teacher's rows get no gradient
    out = {"loss head inputs and their gradients": 4 * rows * (sum(widths) + sum(trained_widths))}
    if cfg.train.mixed_precision != "no":  # a block of vocabulary rows at a time, rounded: bf16, then float32
        heads = [(student.vocab_rows, student.hidden)] + ([(teacher.vocab_rows, teacher.hidden)] if distil else [])
        out["a block of each head weight, rounded"] = 6 * sum(
            min(block_rows(width, shape.device), vocab_rows) * width for vocab_rows, width in heads
        )
    chunk = cfg.train.loss_chunk_rows or auto_chunk_rows(v, shape.device)
    chunk = min(chunk, rows)
    per_element = 8 * len(widths) + 8  # logits and their gradients per pathway, the CE softmax, DBiLD's grad buffer
    if distil and cfg.distill.loss.family == "dbild" and shape.device != "cpu":
        per_element += 20  # the full sort of the chunk: values, int64 order, float64 distances
    out["one chunk of logits, gradients, knee"] = chunk * v * per_element
    return out


def plan_for(cfg: Config, *, gpus: int, engine: str | None = None, device: str = "cuda", **step) -> tuple:
    """Shapes of the config's models (on the meta device) and the step shape: per-device batch from the
    config, tokens per sample ``data.max_length`` and every token after the image supervised (the
    worst case), unless ``step`` gives batch, tokens or rows."""
    from switchkd.training.dry_run import build_meta

    student = shapes_of(build_meta(cfg.model, "model"))
    teacher = shapes_of(build_meta(cfg.teacher, "teacher")) if STAGES[cfg.train.stage]["teacher"] else None
    if engine is None:
        engine = {"ddp": "ddp", "fsdp": "fsdp", "deepspeed": "zero2"}[cfg.train.distributed]
    batch = step.get("batch") or cfg.train.per_device_batch_size
    tokens = step.get("tokens") or cfg.data.max_length
    rows = step.get("rows") or batch * max(1, tokens - student.image_tokens)
    shape = StepShape(batch=batch, tokens=tokens, rows=rows, gpus=gpus, engine=engine, device=device)
    return student, teacher, shape


def fit(cfg: Config, student: Shapes, teacher: Shapes | None, shape: StepShape, *, memory: float) -> str:
    """What fits in ``memory`` per GPU: the largest per-GPU batch, as planned and with the other
    checkpointing choices, in words."""
    lines = []
    options = [("as configured", cfg)]
    if not cfg.train.gradient_checkpointing or not cfg.distill.teacher_checkpointing:
        on = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, gradient_checkpointing=True),
            distill=dataclasses.replace(cfg.distill, teacher_checkpointing=True),
        )
        options.append(("with gradient and teacher checkpointing", on))
    for label, option in options:
        best = 0
        for batch in range(1, MAX_BATCH + 1):
            scaled = dataclasses.replace(shape, batch=batch, rows=max(1, shape.rows * batch // shape.batch))
            if plan_step(option, student, teacher, scaled).peak > memory:
                break
            best = batch
        shown = f"{best} or more" if best == MAX_BATCH else str(best)
        lines.append(
            f"largest per-GPU batch {label}: {shown}" + (" (nothing fits: shard or offload)" if not best else "")
        )
    return "\n".join(lines)
