"""The memory planner's arithmetic on shapes small enough to work out by hand."""

import dataclasses

import pytest

from switchkd.config import Config, DataConfig, DistillConfig, ModelConfig, TrainConfig
from switchkd.training.plan import GB, RUNTIME, Shapes, StepShape, fit, layer_bytes, plan_step

STUDENT = Shapes(
    params=1000,
    vision_params=100,
    projector_params=50,
    vocab_rows=64,
    vocab=60,
    hidden=8,
    intermediate=16,
    layers=2,
    vision_hidden=4,
    vision_intermediate=8,
    vision_layers=1,
    vision_tokens=9,
    image_tokens=9,
)
TEACHER = dataclasses.replace(STUDENT, params=4000, hidden=16, intermediate=32, layers=3)


def _config(stage="dft", **train) -> Config:
    train = {"stage": stage, "mixed_precision": "bf16", "gradient_checkpointing": True, **train}
    return Config(
        model=ModelConfig(pretrained="s"),
        teacher=ModelConfig(pretrained="t"),
        data=DataConfig(train="d.json"),
        train=TrainConfig(**train),
        distill=DistillConfig(teacher_checkpointing=True),
    )


def test_a_dft_step_by_hand():
    shape = StepShape(batch=2, tokens=10, rows=12, device="cpu")
    plan = plan_step(_config(loss_chunk_rows=4), STUDENT, TEACHER, shape)
    p = plan.parts
    assert p["student weights (float32)"] == 4 * 1000
    assert p["AdamW state (2 x float32)"] == 8 * 1000  # dft: every part trains
    assert p["teacher weights (bf16)"] == 2 * 4000
    assert p["saved: student layer inputs (float32)"] == 4 * 20 * 8 * 2  # 2 x 10 tokens, H = 8, 2 layers
    assert p["saved: vision layer inputs"] == 4 * (2 * 9) * 4 * 1
    assert p["recomputed: one student layer"] == 20 * layer_bytes(8, 16)
    assert p["saved: switch pathway layer inputs (bf16)"] == 2 * 20 * 16 * 3
    assert p["recomputed: one teacher layer"] == 20 * layer_bytes(16, 32)
    assert p["loss head inputs and their gradients"] == 4 * 12 * ((8 + 16 + 16) + (8 + 16))
    assert p["a block of each head weight, rounded"] == 6 * 64 * 8 + 6 * 64 * 16  # blocks hold whole heads here
    assert p["one chunk of logits, gradients, knee"] == 4 * 60 * (8 * 3 + 8)  # CPU: no full sort
    assert p["student gradients (float32)"] == 4 * 1000
    persistent = 4000 + 8000 + 8000
    saved = 1280 + 288 + 1920  # the three "saved" parts above
    head = p["loss head inputs and their gradients"] + p["a block of each head weight, rounded"] + 7680
    assert plan.head_phase == persistent + saved + head + 4 * 64 * 8  # the head's weight gradient
    assert plan.backward_phase == persistent + saved + 20 * layer_bytes(16, 32) + 4000
    assert plan.peak == RUNTIME["cpu"] + max(plan.head_phase, plan.backward_phase)


def test_engines_shard_what_they_shard():
    cfg = _config()
    one = plan_step(cfg, STUDENT, TEACHER, StepShape(batch=1, tokens=10, rows=5, gpus=1, engine="ddp"))
    ddp = plan_step(cfg, STUDENT, TEACHER, StepShape(batch=1, tokens=10, rows=5, gpus=8, engine="ddp"))
    zero2 = plan_step(cfg, STUDENT, TEACHER, StepShape(batch=1, tokens=10, rows=5, gpus=8, engine="zero2"))
    fsdp = plan_step(cfg, STUDENT, TEACHER, StepShape(batch=1, tokens=10, rows=5, gpus=8, engine="fsdp"))
    weights, adam = "student weights (float32)", "AdamW state (2 x float32)"
    assert ddp.parts[weights] == zero2.parts[weights] == 8 * fsdp.parts[weights] == 4000
    assert ddp.parts[adam] == 8 * zero2.parts[adam] == 8 * fsdp.parts[adam] == 8000
    assert ddp.parts["student gradients (float32, + DDP buckets)"] == 2 * one.parts["student gradients (float32)"]
    assert zero2.parts["student gradients (float32)"] == 4000 / 8
    assert fsdp.peak < zero2.peak < ddp.peak


def test_pt_trains_the_projector_only_and_sft_has_no_teacher():
    pt = plan_step(_config("pt"), STUDENT, None, StepShape(batch=1, tokens=10, rows=5))
    assert pt.parts["AdamW state (2 x float32)"] == 8 * 50
    assert "teacher weights (bf16)" not in pt.parts
    assert pt.parts["a block of each head weight, rounded"] == 6 * 64 * 8  # the student's head only


def test_fit_finds_the_largest_batch():
    cfg = _config()
    shape = StepShape(batch=1, tokens=100, rows=90)
    one = plan_step(cfg, STUDENT, TEACHER, shape).peak
    three = plan_step(cfg, STUDENT, TEACHER, dataclasses.replace(shape, batch=3, rows=270)).peak
    four = plan_step(cfg, STUDENT, TEACHER, dataclasses.replace(shape, batch=4, rows=360)).peak
    assert one < three < four
    assert fit(cfg, STUDENT, TEACHER, shape, memory=(three + four) / 2).startswith(
        "largest per-GPU batch as configured: 3"
    )
    assert "nothing fits" in fit(cfg, STUDENT, TEACHER, shape, memory=one / 2)


def test_an_unknown_engine_is_named():
    with pytest.raises(ValueError, match="engine: must be one of ddp, zero2, fsdp"):
        plan_step(_config(), STUDENT, TEACHER, StepShape(batch=1, tokens=10, rows=5, engine="zero3"))
    assert GB == 2**30
