"""FSDP2 (``train.distributed: fsdp``) on two real CPU processes over gloo: what one process computes,
with the student and the frozen teacher sharded; sharded checkpoints that resume bit for bit, survive a
kill in the middle of their write, and never unpickle anything."""

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from switchkd.models import VisionLanguageModel
from switchkd.training import checkpoints, load_config, train
from switchkd.training.dry_run import build_meta
from switchkd.training.sharding import process_share
from switchkd.training.stages import apply_stage, trainable_parts
from tests.integration.runs import (
    Payload,
    assert_resumed,
    curve,
    curve_bits,
    env,
    free_port,
    make_config,
    mark_kept_log,
    same_weights,
    torchrun,
    trained_steps,
    twelve_records,
    with_data,
)

pytestmark = pytest.mark.slow

HELD = re.compile(
    r"fsdp: rank (\d) of 2 holds student ([\d,]+) of ([\d,]+) parameter bytes, teacher ([\d,]+) of ([\d,]+)"
)


def _held(stderr: str) -> dict[int, dict[str, tuple[int, int]]]:
    out = {}
    for rank, *numbers in HELD.findall(stderr):
        s_local, s_whole, t_local, t_whole = (int(n.replace(",", "")) for n in numbers)
        out[int(rank)] = {"student": (s_local, s_whole), "teacher": (t_local, t_whole)}
    return out


def test_two_fsdp_processes_compute_what_one_process_computes_with_the_teacher_sharded(tiny_world, tmp_path):
    """DFT with Switch-KD (DBiLD-RKL, the default loss), 3 steps. One process takes both halves of each
    step's batch as two accumulated micro-batches; the two processes each take one half and FSDP
    reduce-scatters the gradient sums. The same float32 arithmetic in another order: losses agree to
    1e-5 relative, weights to 1e-4 relative + 1e-5 absolute (Adam divides each gradient by its own
    running norm, so a parameter whose gradient is near zero - a key bias, which softmax ignores - moves
    by a step of rounding noise; the DDP test holds the same bound)."""
    one = tmp_path / "one"
    train(load_config(make_config(tiny_world, one, grad_accum=2)))
    out = tmp_path / "fsdp"
    done = torchrun(make_config(tiny_world, out, distributed="fsdp", save_every=1))
    assert curve(out) == pytest.approx(curve(one), rel=1e-5)
    want = VisionLanguageModel.from_pretrained(one / "final").state_dict()
    got = VisionLanguageModel.from_pretrained(out / "final").state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert json.loads((out / "log.jsonl").read_text().splitlines()[0])["vsd"] > 0  # the switch pathway ran

    held = _held(done.stderr)
    assert sorted(held) == [0, 1], done.stderr[-3000:]
    for part in ("student", "teacher"):
        whole = held[0][part][1]
        assert sum(held[r][part][0] for r in (0, 1)) == whole  # every byte held once
        for rank in (0, 1):
            assert 0.45 < held[rank][part][0] / whole < 0.55, (part, rank, held)
    # what --dry-run reports for two processes (meta models, no weights) is what rank 0 held
    cfg = load_config(out.with_suffix(".yaml"))
    student, teacher = build_meta(cfg.model, "model"), build_meta(cfg.teacher, "teacher")
    apply_stage(student, trainable_parts(cfg.train.stage, cfg.train.trainable))
    share = process_share(student, teacher, cfg.train, 2)
    assert (share["student parameters"], share["teacher parameters"]) == (held[0]["student"][0], held[0]["teacher"][0])

    # The sharded checkpoint: one safetensors file of weights and one of optimizer state per process,
    # JSON beside them, nothing else (nothing that could be a pickle).
    names = sorted(p.name for p in checkpoints(out)[-1].iterdir())
    assert names == [
        "model-00000.safetensors",
        "model-00001.safetensors",
        "optimizer-00000.safetensors",
        "optimizer-00001.safetensors",
        "optimizer.json",
        "rng-0.json",
        "rng-1.json",
        "shards.json",
        "trainer_state.json",
    ]
    with safe_open(str(checkpoints(out)[-1] / "model-00000.safetensors"), framework="pt") as f:
        assert any(key.startswith("held_teacher.") for key in f.keys())  # the teacher's shards too

    # bf16 as FSDP's parameter-dtype policy (float32 master weights, float32 gradient reduction), with
    # per-layer checkpointing of the student and of the switch pathway through the teacher: the same
    # run up to bf16 rounding (5 %, as the one-process bf16 test allows).
    options = dict(mixed_precision="bf16", gradient_checkpointing=True, distributed="fsdp")
    config = make_config(tiny_world, tmp_path / "bf16", **options)
    config.write_text(config.read_text() + "distill:\n  teacher_checkpointing: true\n")
    torchrun(config)
    records = [json.loads(x) for x in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    for got_record, want_record in zip(records, reference, strict=True):
        for key in ("loss", "ce", "align", "vsd"):
            assert got_record[key] == pytest.approx(want_record[key], rel=0.05), key
    assert records[0]["loss"] != reference[0]["loss"]  # bf16 did run


def test_sft_without_a_teacher_is_sharded_too(tiny_world, tmp_path):
    """The plain language-modelling objective (PT, SFT) under FSDP2: what one process computes."""
    one, out = tmp_path / "one", tmp_path / "fsdp"
    train(load_config(make_config(tiny_world, one, stage="sft", grad_accum=2)))
    torchrun(make_config(tiny_world, out, stage="sft", distributed="fsdp"))
    assert curve(out) == pytest.approx(curve(one), rel=1e-5)
    want = VisionLanguageModel.from_pretrained(one / "final").state_dict()
    got = VisionLanguageModel.from_pretrained(out / "final").state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


# Runs ``switchkd train`` under torchrun with the sharded checkpoint write wrapped: at step 4, each
# process writes its shard files, then writes its pid to a flag file and blocks before the checkpoint is
# published; the test kills every process there.
_BLOCK_IN_WRITE = """
import os, pathlib, sys, time
import switchkd.training.sharding as sharding
from switchkd.cli.main import main
real = sharding.save_shards
def blocking(objective, optimizer, folder):
    real(objective, optimizer, folder)
    if folder.name.endswith("step-0000004"):
        pathlib.Path(sys.argv[1] + "-" + os.environ["RANK"]).write_text(str(os.getpid()))
        time.sleep(3600)
sharding.save_shards = blocking
sys.exit(main(sys.argv[2:]))
"""


def _kill_during_the_step_4_write(config: Path, tmp_path: Path) -> None:
    flag, script = tmp_path / "writing", tmp_path / "block_in_write.py"
    script.write_text(_BLOCK_IN_WRITE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd += [str(script), str(flag), "train", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    flags = [Path(f"{flag}-{rank}") for rank in (0, 1)]
    deadline = time.time() + 300
    while not all(f.exists() for f in flags) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert all(f.exists() for f in flags), proc.stderr.read().decode()[-3000:] if proc.poll() is not None else ""
    for f in flags:  # torchrun starts each worker in a session of its own: each is killed by its pid
        os.kill(int(f.read_text()), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_kill_during_a_sharded_checkpoint_write_resumes_from_the_one_before_bit_for_bit(tiny_world, tmp_path):
    """12 records, 2 per process: 3 steps an epoch. Checkpoints every 2 steps; the kill lands while both
    processes are writing step 4 (the half-written folder stays behind). Resume must load step 2 (mid
    epoch 0), train steps 3..7 only (across two epoch ends) and end where the uninterrupted two-process
    run ends, bit for bit: same world size, same arithmetic."""
    data = twelve_records(tiny_world, tmp_path)

    def config(out: Path) -> Path:
        overrides = dict(max_steps=7, save_every=2, per_device_batch_size=2, distributed="fsdp")
        return with_data(make_config(tiny_world, out, **overrides), data)

    full = tmp_path / "full"
    torchrun(config(full))
    assert [json.loads(x)["epoch"] for x in (full / "log.jsonl").read_text().splitlines()] == [0, 0, 0, 1, 1, 1, 2]

    out = tmp_path / "killed"
    _kill_during_the_step_4_write(config(out), tmp_path)
    assert [c.name for c in checkpoints(out)] == ["step-0000002"]
    half = out / "checkpoints" / ".tmp-step-0000004"
    assert (half / "model-00000.safetensors").is_file() and not (half / "trainer_state.json").exists()
    mark_kept_log(out)
    assert_resumed(torchrun(config(out), "--resume").stderr, out, 2)
    assert trained_steps(out) == ([1, 2], [3, 4, 5, 6, 7])
    assert curve_bits(out) == curve_bits(full)
    same_weights(full / "final", out / "final")
    assert not half.exists()  # the next write of step 4 replaced it


def _forge(folder: Path, names: list[str], payload: bytes) -> None:
    """Replace ``names`` in ``folder`` by ``payload`` and write their checksums into trainer_state.json, as
    someone who can write the checkpoint could."""
    meta = json.loads((folder / "trainer_state.json").read_text())
    for name in names:
        (folder / name).write_bytes(payload)
        meta["sha256"][name] = hashlib.sha256(payload).hexdigest()
    (folder / "trainer_state.json").write_text(json.dumps(meta))


def _resume(config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd += ["-m", "switchkd", "train", "--config", str(config), "--resume"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=180)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("switchkd train: error:")]


def test_pickle_payloads_in_a_sharded_checkpoint_never_run(tiny_world, tmp_path):
    """A pickle that runs a shell command, planted in every file of the newest sharded checkpoint:
    with stale checksums it is skipped (one warning naming the file) and the run resumes from the one
    before; with forged checksums - in every file, or in one process's shard alone - both processes
    stop with the same one-line error, none waits for the other. The command never runs."""
    marker = tmp_path / "executed"
    payload = pickle.dumps(Payload(marker))
    full = tmp_path / "full"
    config = make_config(tiny_world, full, distributed="fsdp", max_steps=2, save_every=1)
    torchrun(config)

    def copy(name: str) -> tuple[Path, Path, Path]:
        out = tmp_path / name
        shutil.copytree(full, out)
        shutil.rmtree(out / "final")
        mark_kept_log(out)
        step = out / "checkpoints" / "step-0000002"
        return out, step, make_config(tiny_world, out, distributed="fsdp", max_steps=2, save_every=1)

    out, step, cfg = copy("stale")
    for path in step.iterdir():
        if path.name != "trainer_state.json":
            path.write_bytes(payload)
    done = _resume(cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step-0000002 is skipped: model-00000.safetensors does not match its checksum" in done.stderr
    assert_resumed(done.stderr, out, 1)
    assert trained_steps(out) == ([1], [2])
    same_weights(full / "final", out / "final")

    for name, files in (
        ("forged", sorted(p.name for p in step.iterdir() if p.name != "trainer_state.json")),
        ("one-shard", ["model-00001.safetensors"]),  # only process 1 fails to read its piece
        ("layout", ["shards.json"]),
    ):
        out, step, cfg = copy(name)
        _forge(step, files, payload)
        started = time.monotonic()
        done = _resume(cfg)
        assert done.returncode != 0 and time.monotonic() - started < 150, name
        errors = _errors(done.stderr)
        assert len(errors) == 2 and errors[0] == errors[1], (name, done.stderr[-3000:])
        assert f"checkpoint {step} cannot be loaded" in errors[0], errors
    assert not marker.exists()

    # Another world size: refused in one line (each process's RNG states and data position are its own).
    out, step, cfg = copy("one-process")
    with pytest.raises(ValueError, match=r"written by 2 process\(es\) and this run has 1: resume with 2$"):
        train(load_config(cfg), resume=True)
