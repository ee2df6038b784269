"""The memory planner (``switchkd plan``) on the paper's three runs, at their published model shapes,
for 8 x 80 GB and 8 x 40 GB GPUs under ZeRO-2 and FSDP2: the per-GPU peak of the configured step and
the largest per-GPU batch that fits; then what each FSDP process holds (``train --dry-run``). Models
are built on the meta device from the config.json values of the released checkpoints (written out
below), with the real Qwen tokenizer; no weights exist.

    python benchmarks/plan_paper.py
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import tokenizer_dir  # noqa: E402

SIGLIP_B16_384 = {"model_type": "siglip_vision_model", "hidden_size": 768, "intermediate_size": 3072}
SIGLIP_B16_384 |= {"num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 384, "patch_size": 16}
CLIP_L14_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096}
CLIP_L14_336 |= {"num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14}


def qwen25(hidden, intermediate, layers, heads, kv, vocab=151_936, tied=True) -> dict:
    return {
        "model_type": "qwen2",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 32_768,
    }


QWEN = {
    "0.5B": qwen25(896, 4864, 24, 14, 2),
    "1.5B": qwen25(1536, 8960, 28, 12, 2),
    "3B": qwen25(2048, 11008, 36, 16, 2),
    "7B": qwen25(3584, 18944, 28, 28, 4, vocab=152_064, tied=False),
}


def model(vision: dict, llm: str, projector: str = "mlp2x_gelu", **kwargs) -> dict:
    return {"vision": vision, "llm": QWEN[llm], "tokenizer": str(tokenizer_dir()), "projector": projector, **kwargs}


RUNS = {
    "PT 0.5B (SigLIP)": {
        "model": model(SIGLIP_B16_384, "0.5B"),
        "train": {"stage": "pt", "per_device_batch_size": 32, "distributed": "deepspeed"},
    },
    "DFT 0.5B <- 3B (SigLIP)": {
        "model": model(SIGLIP_B16_384, "0.5B"),
        "teacher": model(SIGLIP_B16_384, "3B"),
        "train": {"stage": "dft", "per_device_batch_size": 16, "distributed": "deepspeed"},
    },
    "DFT 1.5B <- 7B (CLIP-L, LDPv2)": {
        "model": model(CLIP_L14_336, "1.5B", "ldpv2", projector_kwargs={"grid": 12}),
        "teacher": model(CLIP_L14_336, "7B", "ldpv2", projector_kwargs={"grid": 12}),
        "train": {"stage": "dft", "per_device_batch_size": 16, "distributed": "deepspeed"},
    },
}
COMMON_TRAIN = {"mixed_precision": "bf16", "gradient_checkpointing": True, "zero_stage": 2}


def configs(tmp: str):
    from switchkd.config import load_config

    for name, run in RUNS.items():
        cfg = {**run, "data": {"train": "llava.json", "max_length": 2048}}
        cfg["train"] = {**COMMON_TRAIN, **run["train"]}
        cfg["distill"] = {"teacher_checkpointing": True}
        path = Path(tmp) / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        yield name, load_config(path)


def plans(tmp: str) -> None:
    from switchkd.training.plan import GB, fit, plan_for, plan_step

    print("| run | engine | per-GPU batch x tokens | peak per GPU (GB) | 8 x 80 GB | 8 x 40 GB |")
    print("| --- | --- | --- | ---: | --- | --- |")
    for name, config in configs(tmp):
        for engine in ("zero2", "fsdp"):
            student, teacher, shape = plan_for(config, gpus=8, engine=engine)
            peak = plan_step(config, student, teacher, shape).peak
            cells = []
            for memory in (80, 40):
                verdict = "fits" if peak <= memory * GB else "does not fit"
                largest = fit(config, student, teacher, dataclasses.replace(shape), memory=memory * GB).splitlines()[0]
                cells.append(f"{verdict}; largest batch {largest.split(': ')[-1]}")
            print(
                f"| {name} | {shape.engine} | {shape.batch} x {shape.tokens} | {peak / GB:,.1f} | "
                f"{cells[0]} | {cells[1]} |"
            )


def shares(tmp: str) -> None:
    """What ``switchkd train --dry-run`` reports per FSDP process for these runs, on 8 and 16 processes."""
    from switchkd.training.dry_run import build_meta
    from switchkd.training.sharding import process_share
    from switchkd.training.stages import STAGES, apply_stage, trainable_parts

    print("\n| run | processes | student weights | gradients | AdamW state | teacher weights | gathered whole |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, config in configs(tmp):
        t = config.train
        student = build_meta(config.model, "model")
        apply_stage(student, trainable_parts(t.stage, t.trainable))
        teacher = build_meta(config.teacher, "teacher") if STAGES[t.stage]["teacher"] else None
        for n in (8, 16):
            share = {k: v / 2**30 for k, v in process_share(student, teacher, t, n).items()}
            gathered = share["gathered: root unit"] + share["gathered: two blocks"]
            print(
                f"| {name} | {n} | {share['student parameters']:.2f} GB | {share['student gradients']:.2f} GB | "
                f"{share['student AdamW state']:.2f} GB | {share.get('teacher parameters', 0):.2f} GB | "
                f"{gathered:.2f} GB |"
            )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plans(tmp)
        shares(tmp)


if __name__ == "__main__":
    main()
