"""Helpers for training tests that run real processes: configs on the tiny world, torchrun launches, kills
at known points, and what a resumed run must show (the step it loaded, the steps it trained)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from switchkd.models.pathway import load_vlm
from switchkd.training import checkpoints

REPO = Path(__file__).resolve().parents[2]


def make_config(world, out: Path, stage="dft", **train_overrides) -> Path:
    cfg = {
        "model": {"pretrained": str(world.student)},
        "data": {
            "train": str(world.paths["dft" if stage in ("dft", "sft") else "pt"]),
            "num_workers": 0,
            "length_grouped": False,
        },
        "train": {
            "stage": stage,
            "lr": 1e-3,
            "per_device_batch_size": 4,
            "grad_accum": 1,
            "max_steps": 3,
            "progress": False,
            "output_dir": str(out),
            **train_overrides,
        },
    }
    if stage in ("dft", "dpt"):
        cfg["teacher"] = {"pretrained": str(world.teacher)}
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def torchrun(config: Path, *overrides: str, procs: int = 2, check: bool = True):
    """``switchkd train`` under torchrun; with ``check`` the run must succeed (else its stderr's end is
    the assertion's message)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_port",
        str(free_port()),
        "-m",
        "switchkd",
        "train",
        "--config",
        str(config),
        *overrides,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert out.returncode == 0 or not check, out.stderr[-3000:]
    return out


def curve(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


def twelve_records(world, tmp_path: Path) -> dict:
    """12 records at 4 per step: an epoch is 3 steps, so a short run crosses epoch boundaries."""
    data = tmp_path / "twelve.json"
    data.write_text(json.dumps(json.loads(world.paths["dft"].read_text())[:12]))
    return {"train": str(data), "image_root": str(world.paths["dft"].parent)}


def with_data(config: Path, data: dict) -> Path:
    cfg = yaml.safe_load(config.read_text())
    cfg["data"].update(data)
    config.write_text(yaml.safe_dump(cfg))
    return config


# Runs ``switchkd train`` with the trainer's checkpoint call wrapped: after the first checkpoint of the
# loop is published it writes a flag file and blocks, so the kill always lands mid-run, right after it.
BLOCK_AFTER_FIRST_CHECKPOINT = """
import pathlib, sys, time
import switchkd.training.trainer as trainer
from switchkd.cli.main import main
real = trainer.save_checkpoint
def blocking(run):
    state = real(run)
    pathlib.Path(sys.argv[1]).write_text(str(run.state.step))
    time.sleep(3600)
    return state
trainer.save_checkpoint = blocking
sys.exit(main(sys.argv[2:]))
"""


def cli_train(config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "switchkd", "train", "--config", str(config), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_after_first_checkpoint(config: Path, out: Path, tmp_path: Path) -> int:
    """Run ``switchkd train`` in its own process and SIGKILL it while it blocks right after its first
    checkpoint; the step that checkpoint holds."""
    flag = tmp_path / f"{out.name}.checkpointed"
    cmd = [sys.executable, "-c", BLOCK_AFTER_FIRST_CHECKPOINT, str(flag), "train", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert flag.exists(), f"no checkpoint was written before the run ended: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = checkpoints(out)
    assert [int(c.name.split("-")[1]) for c in found] == [int(flag.read_text())]
    return int(flag.read_text())


def assert_resumed(stderr: str, out: Path, step: int) -> None:
    """The resumed process said it loaded checkpoint ``step`` (a silent restart says it starts at 0)."""
    assert f"resumed from {out / 'checkpoints' / f'step-{step:07d}'} (step {step})" in stderr, stderr[-3000:]


def mark_kept_log(out: Path) -> None:
    """Tag every record left in the log: a resume keeps them, a restart from step 0 rewrites them."""
    lines = [line for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            kept.append(json.dumps({**json.loads(line), "before_kill": True}))
        except json.JSONDecodeError:
            kept.append(line)  # a torn last line stays torn
    (out / "log.jsonl").write_text("\n".join(kept) + ("\n" if lines[-1].endswith("}") else ""))


def trained_steps(out: Path) -> tuple[list[int], list[int]]:
    """The logged steps kept from before the kill, and those trained after it."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    kept = [r["step"] for r in records if r.pop("before_kill", False)]
    return kept, [r["step"] for r in records if r["step"] not in kept]


def curve_bits(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records]


def same_weights(a: Path, b: Path) -> None:
    want = load_vlm(a).state_dict()
    got = load_vlm(b).state_dict()
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, different[:5]


def cut_back_to(out: Path, step: int) -> None:
    """The folder as a kill right after checkpoint ``step`` leaves it: later checkpoints, the final
    model and the log lines past that step are gone or never written (the log keeps a stale tail)."""
    for ckpt in checkpoints(out):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(out / "final")
    lines = (out / "log.jsonl").read_text().splitlines()
    torn = lines[step + 1][:10]  # a kill in the middle of writing the next line
    (out / "log.jsonl").write_text("\n".join(lines[: step + 1]) + "\n" + torn)  # past the checkpoint


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
