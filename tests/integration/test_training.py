"""Training on real files and real processes: stages, multi-process equality, resume after a kill."""

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from switchkd.config import ConfigError
from switchkd.models import VisionLanguageModel
from switchkd.training import checkpoints, load_config, train
from switchkd.training.dry_run import dry_run
from tests.integration.runs import (
    REPO,
    Payload,
    assert_resumed,
    cli_train,
    curve,
    curve_bits,
    cut_back_to,
    env,
    free_port,
    kill_after_first_checkpoint,
    make_config,
    mark_kept_log,
    same_weights,
    torchrun,
    trained_steps,
    twelve_records,
    with_data,
)


def test_pt_trains_the_projector_only(tiny_world, tmp_path):
    cfg = load_config(make_config(tiny_world, tmp_path / "pt", stage="pt"))
    before = VisionLanguageModel.from_pretrained(tiny_world.student).state_dict()
    result = train(cfg)
    after = VisionLanguageModel.from_pretrained(result.final_model).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"projector"}
    assert len(result.history) == 3 and all(h["loss"] > 0 for h in result.history)


def test_dft_moves_every_part_except_unused_vision_layers(tiny_world, tmp_path):
    result = train(load_config(make_config(tiny_world, tmp_path / "dft")))
    before = VisionLanguageModel.from_pretrained(tiny_world.student).state_dict()
    after = VisionLanguageModel.from_pretrained(result.final_model).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k.split(".")[0] for k in changed} == {"vision_tower", "projector", "llm"}
    # feature layer -2 of a 2-layer CLIP: the last layer and post-layernorm cannot learn
    assert not any(".layers.1." in k or "post_layernorm" in k for k in changed if k.startswith("vision_tower"))
    log = [json.loads(line) for line in (tmp_path / "dft" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "ce", "align", "vsd", "k_teacher", "k_student", "lr", "tokens_per_s"} <= set(log[0])


def test_bf16_dft_casts_the_teacher_once_and_trains_like_float32(tiny_world, tmp_path):
    """Under bf16 mixed precision the frozen teacher is built in bf16 (teacher_dtype=compute) while the
    student keeps float32 weights; the step's losses stay close to the float32 run and to the plain head."""
    from switchkd.training.setup import build_objective

    cfg = load_config(make_config(tiny_world, tmp_path / "probe"), ["train.mixed_precision=bf16"])
    objective = build_objective(cfg, verbose=False)
    assert {p.dtype for p in objective.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in objective.student.parameters()} == {torch.float32}
    kept = build_objective(
        load_config(
            make_config(tiny_world, tmp_path / "probe"), ["train.teacher_dtype=float32", "train.mixed_precision=bf16"]
        ),
        verbose=False,
    )
    assert {p.dtype for p in kept.teacher.parameters()} == {torch.float32}

    curves = {}
    for name, extra in {
        "fp32": [],
        "bf16": ["train.mixed_precision=bf16"],
        "bf16_plain": ["train.mixed_precision=bf16", "train.loss_head=plain"],
    }.items():
        out = tmp_path / name  # one process each: accelerate fixes the precision once per process
        cmd = [sys.executable, "-m", "switchkd", "train", "--config", str(make_config(tiny_world, out, max_steps=2))]
        done = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env(), timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        curves[name] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for key in ("loss", "ce", "align", "vsd"):
        assert curves["bf16"][0][key] == pytest.approx(curves["fp32"][0][key], rel=0.05), key
        # the same bf16 logits, the loss from them in float32 in both heads: only summation order differs
        assert curves["bf16"][0][key] == pytest.approx(curves["bf16_plain"][0][key], rel=1e-5), key
    assert all(record["vsd"] > 0 for record in curves["bf16"])
    assert curves["bf16"][0]["loss"] != curves["fp32"][0]["loss"]  # bf16 did run


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_world, tmp_path):
    one = tmp_path / "one"
    train(load_config(make_config(tiny_world, one, grad_accum=2)))
    torchrun(make_config(tiny_world, tmp_path / "ddp"))
    assert curve(tmp_path / "ddp") == pytest.approx(curve(one), rel=1e-5)
    want = VisionLanguageModel.from_pretrained(one / "final").state_dict()
    got = VisionLanguageModel.from_pretrained(tmp_path / "ddp" / "final").state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_deepspeed_where_accelerate_cannot_run_it_is_an_error_not_quiet_ddp(tiny_world, tmp_path):
    # accelerate runs DeepSpeed on GPUs only; on CPU it used to fall back to DDP unasked.
    if torch.cuda.device_count() >= 2:
        pytest.skip("with GPUs it runs for real (test_fsdp_and_deepspeed_match_one_process)")
    out = torchrun(make_config(tiny_world, tmp_path / "ds", distributed="deepspeed"), check=False)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("switchkd train: error:")]
    assert errors and all("train.distributed: deepspeed: accelerate runs deepspeed on GPUs only" in e for e in errors)
    assert not (tmp_path / "ds" / "log.jsonl").exists()


@pytest.mark.gpu
def test_fsdp_and_deepspeed_match_one_process(tiny_world, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("FSDP and DeepSpeed through accelerate need two GPUs")
    one = tmp_path / "one"
    train(load_config(make_config(tiny_world, one, grad_accum=2)))
    kinds = ["fsdp"] + (["deepspeed"] if importlib.util.find_spec("deepspeed") else [])
    for kind in kinds:
        torchrun(make_config(tiny_world, tmp_path / kind, distributed=kind, save_every=1))
        assert curve(tmp_path / kind) == pytest.approx(curve(one), rel=1e-3)
        resumed = tmp_path / f"{kind}-resumed"
        shutil.copytree(tmp_path / kind, resumed)
        shutil.rmtree(resumed / "checkpoints" / "step-0000003")
        shutil.rmtree(resumed / "final")
        mark_kept_log(resumed)
        done = torchrun(make_config(tiny_world, resumed, distributed=kind, save_every=1), "--resume")
        assert_resumed(done.stderr, resumed, 2)
        assert trained_steps(resumed) == ([1, 2], [3])
        assert curve(resumed) == pytest.approx(curve(tmp_path / kind), rel=1e-5)


def _killed_then_resumed_equals_uninterrupted(world, tmp_path: Path, steps: int, **overrides) -> None:
    """SIGKILL right after the step-2 checkpoint; ``--resume`` loads it and trains steps 3..``steps``
    only, ending bit for bit where the uninterrupted run ends (same process setup and thread count,
    so the same arithmetic)."""
    data = twelve_records(world, tmp_path)
    full = tmp_path / "full"
    cli_train(with_data(make_config(world, full, max_steps=steps, save_every=2, **overrides), data))
    out = tmp_path / "killed"
    config = with_data(make_config(world, out, max_steps=steps, save_every=2, **overrides), data)
    assert kill_after_first_checkpoint(config, out, tmp_path) == 2
    mark_kept_log(out)
    assert_resumed(cli_train(config, "--resume").stderr, out, 2)
    assert trained_steps(out) == ([1, 2], list(range(3, steps + 1)))
    assert curve_bits(out) == curve_bits(full)
    same_weights(full / "final", out / "final")


@pytest.mark.slow
def test_killed_run_resumes_exactly(tiny_world, tmp_path):
    _killed_then_resumed_equals_uninterrupted(tiny_world, tmp_path, 8)  # 8 steps: across epochs 0, 1 and 2
    assert [json.loads(x)["epoch"] for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()][-1] == 2


@pytest.mark.slow
def test_skipped_samples_are_counted_across_processes(tiny_world, tmp_path):
    records = json.loads(tiny_world.paths["dft"].read_text())[:16]
    for r in records[:3]:
        r["image"] = "images/missing.png"
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    config = make_config(tiny_world, tmp_path / "skip", stage="sft", max_steps=2)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"].update(train=str(data), image_root=str(tiny_world.paths["dft"].parent), on_error="skip")
    config.write_text(yaml.safe_dump(cfg))
    torchrun(
        config
    )  # 2 processes x batch 4 x 2 steps = 16 records: each seen once (uneven sizes get padded by repeats)
    state = json.loads((checkpoints(tmp_path / "skip")[-1] / "trainer_state.json").read_text())["state"]
    assert state["skipped"] == {"bad_image": 3}


def test_half_written_checkpoint_is_never_picked(tiny_world, tmp_path):
    out = tmp_path / "run"
    train(load_config(make_config(tiny_world, out, max_steps=2, save_every=1)))
    (out / "checkpoints" / ".tmp-step-0000009").mkdir()
    (out / "checkpoints" / "step-0000007").mkdir()  # no trainer_state.json: incomplete
    assert [p.name for p in checkpoints(out)] == ["step-0000001", "step-0000002"]


def test_a_checkpointed_run_prints_no_false_warnings(tiny_world, tmp_path):
    """Tied LM heads are dropped from checkpoints silently (safetensors' save_model keeps one name per
    storage) and the saved folders load without transformers' regex or model-type notices."""
    config = make_config(tiny_world, tmp_path / "run", max_steps=2, save_every=1)
    done = subprocess.run(
        [sys.executable, "-m", "switchkd", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for notice in ("Removed shared tensor", "incorrect regex pattern", "You are using a model of type"):
        assert notice not in done.stderr, done.stderr[-3000:]
    assert len(checkpoints(tmp_path / "run")) == 2


def test_dry_run_reports_shapes_and_checks_data(tiny_world, tmp_path):
    report = dry_run(load_config(make_config(tiny_world, tmp_path / "d")))
    assert "pair checks passed" in report and "dry run passed" in report
    sharded = dry_run(load_config(make_config(tiny_world, tmp_path / "d", distributed="fsdp")), processes=4)
    assert "fsdp over 4 processes" in sharded and "teacher: parameters" in sharded
    bad = load_config(make_config(tiny_world, tmp_path / "d"), ["data.train=/nonexistent.json"])
    with pytest.raises(FileNotFoundError):
        dry_run(bad)


def test_every_shipped_config_loads():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.stage in ("pt", "dpt", "sft", "dft"), path


def test_resume_is_exact_across_epoch_boundaries(tiny_world, tmp_path):
    """12 records, 4 per step: 3 steps an epoch, 9 steps over 3 epochs. Resuming from any step's
    checkpoint (mid-epoch and at epoch ends) gives the uninterrupted run's losses and weights."""
    records = json.loads(tiny_world.paths["dft"].read_text())[:12]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    image_root = str(tiny_world.paths["dft"].parent)
    overrides = [
        f"data.train={data}",
        f"data.image_root={image_root}",
        "train.max_steps=9",
        "train.save_every=1",
        "train.save_total_limit=null",
        "data.length_grouped=true",
    ]
    reference = train(load_config(make_config(tiny_world, tmp_path / "full", stage="sft"), overrides))
    assert [h["epoch"] for h in reference.history] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    want = VisionLanguageModel.from_pretrained(reference.final_model).state_dict()
    for step in (2, 3, 4, 6, 7):
        out = tmp_path / f"cut{step}"
        shutil.copytree(tmp_path / "full", out)
        cut_back_to(out, step)
        resumed = train(load_config(make_config(tiny_world, out, stage="sft"), overrides), resume=True)
        assert [h["step"] for h in resumed.history] == list(range(step + 1, 10))
        assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history[step:]], step
        got = VisionLanguageModel.from_pretrained(resumed.final_model).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), step
        logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
        assert logged == list(range(1, 10)), step  # cut back to the checkpoint, then continued


def test_a_bad_sample_in_a_dataloader_worker_is_one_line_naming_the_record(tiny_world, tmp_path):
    from switchkd.data.dataset import SampleError

    records = json.loads(tiny_world.paths["dft"].read_text())[:8]
    records[5]["image"] = "images/missing.png"
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(records))
    config = with_data(
        make_config(tiny_world, tmp_path / "run", stage="sft", max_steps=2),
        {"train": str(data), "image_root": str(tiny_world.paths["dft"].parent), "num_workers": 2},
    )
    with pytest.raises(SampleError) as err:
        train(load_config(config))
    assert "\n" not in str(err.value) and "record 5" in str(err.value) and "missing.png" in str(err.value)
    assert err.value.reason == "bad_image"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchkd",
            "train",
            "--config",
            str(config),
            "train.output_dir=" + str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    errors = [line for line in cli.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("switchkd train: error: record 5"), cli.stderr[-2000:]


def test_empty_data_is_an_error_in_training_and_in_the_dry_run(tiny_world, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = with_data(make_config(tiny_world, tmp_path / "run", stage="sft"), {"train": str(empty)})
    with pytest.raises(ValueError, match="holds no records"):
        dry_run(load_config(config))
    with pytest.raises(ValueError, match="holds no records"):
        train(load_config(config))


def test_resume_never_unpickles_and_skips_damaged_checkpoints(tiny_world, tmp_path, caplog):
    import hashlib
    import pickle

    overrides = ["train.max_steps=4", "train.save_every=1", "train.save_total_limit=null"]
    data = twelve_records(tiny_world, tmp_path)
    reference = train(load_config(with_data(make_config(tiny_world, tmp_path / "full", stage="sft"), data), overrides))
    want = VisionLanguageModel.from_pretrained(reference.final_model).state_dict()
    marker = tmp_path / "executed"
    evil = pickle.dumps(Payload(marker))

    def cut(name: str) -> tuple[Path, dict]:
        out = tmp_path / name
        shutil.copytree(tmp_path / "full", out)
        shutil.rmtree(out / "final")
        steps = {int(p.name.split("-")[1]): p for p in checkpoints(out)}
        assert sorted(steps) == [1, 2, 3, 4]
        return out, steps

    def resume(out: Path):
        return train(load_config(with_data(make_config(tiny_world, out, stage="sft"), data), overrides), resume=True)

    def check_equal(result):
        got = VisionLanguageModel.from_pretrained(result.final_model).state_dict()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)

    # Every file of step 4 replaced by a malicious pickle, and accelerate's pickle files planted too:
    # step 4 fails its checksums and step 3 is used; nothing is ever unpickled.
    out, steps = cut("planted")
    for path in steps[4].rglob("*"):
        if path.is_file() and path.name != "trainer_state.json":
            path.write_bytes(evil)
    for folder in (steps[3], steps[4]):
        (folder / "state").mkdir(exist_ok=True)
        for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
            (folder / "state" / name).write_bytes(evil)
    with caplog.at_level("WARNING", logger="switchkd.train"):
        result = resume(out)
    assert "step-0000004 is skipped: model.safetensors does not match its checksum" in caplog.text
    assert [h["step"] for h in result.history] == [4] and not marker.exists()
    assert result.history[0]["loss"] == pytest.approx(reference.history[3]["loss"], rel=1e-6)
    check_equal(result)

    # The same with a forged checksum list: one clear error, still nothing executed.
    out, steps = cut("forged")
    meta = json.loads((steps[4] / "trainer_state.json").read_text())
    for name in meta["sha256"]:
        (steps[4] / name).write_bytes(evil)
        meta["sha256"][name] = hashlib.sha256(evil).hexdigest()
    (steps[4] / "trainer_state.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="step-0000004 cannot be loaded"):
        resume(out)
    assert not marker.exists()

    # A truncated newest checkpoint and a flipped byte in the one before: back to step 2, exactly.
    out, steps = cut("corrupt")
    weights = steps[4] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    optimizer = steps[3] / "optimizer.safetensors"
    flipped = bytearray(optimizer.read_bytes())
    flipped[-7] ^= 0x01
    optimizer.write_bytes(bytes(flipped))
    result = resume(out)
    assert [h["step"] for h in result.history] == [3, 4]
    check_equal(result)

    # No intact checkpoint at all: an error, not a silent restart from step 0.
    out, steps = cut("none")
    for folder in steps.values():
        (folder / "trainer_state.json").write_bytes(evil)
    with pytest.raises(ValueError, match="no intact checkpoint"):
        resume(out)
    assert not marker.exists()


def test_a_run_owns_its_output_folder(tiny_world, tmp_path, caplog):
    out = tmp_path / "run"
    data = twelve_records(tiny_world, tmp_path)
    config = with_data(make_config(tiny_world, out, stage="sft", save_every=1, save_total_limit=None), data)
    # Another live process holds the folder: refused, naming it; once it is gone, its lock is stale.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    out.mkdir(parents=True)
    (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    with pytest.raises(ValueError, match=f"is in use by another run \\(pid {holder.pid} on"):
        train(load_config(config))
    holder.kill()
    holder.wait()
    first = train(load_config(config))
    assert not (out / ".lock").exists()
    # A second run into the same folder: refused unless it resumes or overwrites.
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(
        ValueError, match=r"holds a run \(checkpoints, final, log.jsonl\): pass --resume .* --overwrite"
    ):
        train(load_config(config))
    second = train(load_config(config), overwrite=True)
    assert (out / "notes.txt").read_text() == "the user's own file"  # --overwrite removes only the run's files
    assert [p.name for p in checkpoints(out)] == ["step-0000001", "step-0000002", "step-0000003"]
    assert json.loads((out / "run.json").read_text())["run_id"] != ""
    assert [h["loss"] for h in second.history] == [h["loss"] for h in first.history]
    # Another run's checkpoint with a higher step lands in the folder: resume ignores it.
    other = tmp_path / "other"
    train(load_config(with_data(make_config(tiny_world, other, stage="sft", max_steps=5, save_every=1), data)))
    shutil.copytree(checkpoints(other)[-1], out / "checkpoints" / "step-0000009")
    shutil.rmtree(checkpoints(out)[2])  # step 3: resume from our own step 2
    with caplog.at_level("WARNING", logger="switchkd.train"):
        resumed = train(load_config(config), resume=True)
    assert "step-0000009 is skipped: it was written by another run" in caplog.text
    assert [h["step"] for h in resumed.history] == [3]
    assert resumed.history[0]["loss"] == first.history[2]["loss"]


def test_a_missing_teacher_folder_is_named_as_the_teacher(tiny_world, tmp_path):
    config = make_config(tiny_world, tmp_path / "run")
    for run in (dry_run, train):
        with pytest.raises(ConfigError, match=r"^teacher\.pretrained: local folder not found: /no/teacher"):
            run(load_config(config, ["teacher.pretrained=/no/teacher"]))
        with pytest.raises(ConfigError, match=r"^model\.pretrained: local folder not found: /no/student"):
            run(load_config(config, ["model.pretrained=/no/student"]))


def test_a_run_that_skips_every_sample_is_an_error(tiny_world, tmp_path):
    records = json.loads(tiny_world.paths["dft"].read_text())[:8]
    for r in records:
        r["image"] = "images/missing.png"
    data = tmp_path / "all_bad.json"
    data.write_text(json.dumps(records))
    config = with_data(
        make_config(tiny_world, tmp_path / "run", stage="sft", max_steps=2),
        {"train": str(data), "image_root": str(tiny_world.paths["dft"].parent), "on_error": "skip"},
    )
    with pytest.raises(ValueError, match=r"every sample was skipped \(\{'bad_image': 8\}\); nothing was trained"):
        train(load_config(config))
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / ".lock").exists()


def test_a_full_disk_is_one_error_naming_the_checkpoint_and_leaves_nothing_half_written(
    tiny_world, tmp_path, monkeypatch
):
    import errno

    import switchkd.training.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"cannot write .*checkpoints/step-0000001: No space left on device$"):
        train(load_config(make_config(tiny_world, out, stage="sft", save_every=1)))
    assert checkpoints(out) == [] and list((out / "checkpoints").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "final"])
def test_a_write_failing_on_one_process_fails_every_process_instead_of_hanging(tiny_world, tmp_path, where):
    # One process's disk is full: process 1's for a checkpoint (its RNG file), process 0's for the final model.
    rank, target = {
        "checkpoint": ("1", "checkpoint._rng_state"),
        "final": ("0", "VisionLanguageModel.save_pretrained"),
    }[where]
    script = tmp_path / "full_disk.py"
    script.write_text(
        textwrap.dedent(f"""
        import errno, os, sys
        import switchkd.training.checkpoint as checkpoint
        from switchkd.models import VisionLanguageModel

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        if os.environ["RANK"] == "{rank}":
            {target} = full
        from switchkd.cli.main import main
        sys.exit(main())
        """)
    )
    out = tmp_path / "run"
    config = make_config(tiny_world, out, stage="sft", max_steps=2, save_every=2 if where == "checkpoint" else None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd += [str(script), "train", "--config", str(config)]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode != 0 and time.monotonic() - started < 240
    name = "checkpoints/step-0000002" if where == "checkpoint" else "final"
    errors = [line for line in done.stderr.splitlines() if line.startswith("switchkd train: error:")]
    assert len(errors) == 2, done.stderr[-3000:]  # one line from each process, the same line
    assert all(line.endswith(f"cannot write {out / name}: No space left on device") for line in errors), errors
    # Nothing half-written is listed; a failed final model leaves its checkpoint to resume from.
    assert [c.name for c in checkpoints(out)] == ([] if where == "checkpoint" else ["step-0000002"])
    assert not (out / "final").exists() and not (out / ".lock").exists()
    assert [p.name for p in out.rglob(".tmp-*")] == []


@pytest.mark.slow
def test_two_process_resume_is_exact_across_epochs(tiny_world, tmp_path):
    """DDP wraps the sampler in accelerate's BatchSamplerShard: the resumed epoch must still be ours."""
    data = twelve_records(tiny_world, tmp_path)  # 2 processes x 2 per process: 3 steps an epoch

    def config(out: Path) -> Path:
        overrides = dict(max_steps=7, save_every=1, save_total_limit=None, per_device_batch_size=2)
        return with_data(make_config(tiny_world, out, stage="sft", **overrides), data)

    torchrun(config(tmp_path / "full"))
    reference = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in reference] == [0, 0, 0, 1, 1, 1, 2]
    for step in (2, 4):
        out = tmp_path / f"cut{step}"
        shutil.copytree(tmp_path / "full", out)
        cut_back_to(out, step)
        mark_kept_log(out)
        assert_resumed(torchrun(config(out), "--resume").stderr, out, step)
        assert trained_steps(out) == (list(range(1, step + 1)), list(range(step + 1, 8)))
        assert curve(out) == curve(tmp_path / "full"), step  # same world size, same arithmetic
        same_weights(tmp_path / "full" / "final", out / "final")


@pytest.mark.parametrize("stage", ["dft", "sft"])
def test_diagnostics_are_logged_and_change_nothing_of_training(tiny_world, tmp_path, stage):
    """``diagnostics_every`` logs what moves the vision tower (each term's gradient norm alone, the
    encoders' feature distance) at its steps, and the run's losses and weights stay bit-identical."""
    plain = train(load_config(make_config(tiny_world, tmp_path / "plain", stage=stage, max_steps=4)))
    seen = train(load_config(make_config(tiny_world, tmp_path / "seen", stage=stage, max_steps=4, diagnostics_every=2)))
    assert [h["loss"] for h in seen.history] == [h["loss"] for h in plain.history]
    a = VisionLanguageModel.from_pretrained(plain.final_model).state_dict()
    b = VisionLanguageModel.from_pretrained(seen.final_model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "seen" / "log.jsonl").read_text().splitlines()]
    with_diag = [r["step"] for r in rows if "grad_vision_ce" in r]
    assert with_diag == [2, 4]
    terms = {"grad_vision_ce", "grad_vision_align", "grad_vision_vsd", "feature_distance"}
    if stage == "sft":
        terms = {"grad_vision_ce"}
    row = rows[1]
    assert terms <= set(row) and not ({"grad_vision_align", "feature_distance"} - terms) & set(row)
    assert all(row[k] > 0 for k in terms)


def test_diagnostics_every_must_fall_on_logged_steps(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="diagnostics_every.*multiple of log_every"):
        load_config(make_config(tiny_world, tmp_path / "x", log_every=2, diagnostics_every=3))


LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "vision": True}


def test_lora_dft_trains_adapters_and_the_projector_and_merges_to_the_adapter_model(tiny_world, tmp_path):
    from safetensors.torch import load_model

    from switchkd.data.dataset import Collator, LlavaDataset
    from switchkd.training.setup import build_objective

    config = load_config(make_config(tiny_world, tmp_path / "lora", max_steps=3, lora=LORA))
    objective = build_objective(config, verbose=False)
    trainable = [n for n, p in objective.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable if n.startswith(("student.llm.", "student.vision_tower.")))
    assert any(n.startswith("student.vision_tower.") and "lora_" in n for n in trainable)
    assert {n for n, _ in objective.student.projector.named_parameters()} <= {
        n.removeprefix("student.projector.") for n in trainable
    }
    result = train(config)
    # the adapter model, as the last step checkpoint holds it, against the merged final model
    adapted = build_objective(config, verbose=False)
    load_model(adapted, str(checkpoints(tmp_path / "lora")[-1] / "model.safetensors"))
    merged = VisionLanguageModel.from_pretrained(result.final_model)
    assert not any("lora" in k for k in merged.state_dict())
    ds = LlavaDataset.for_model(tiny_world.paths["dft"], tiny_world.paths["dft"].parent, merged)
    batch = Collator(merged.tokenizer.pad_token_id)([ds[0], ds[1]])
    inputs = (batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        want = adapted.student.eval()(*inputs, pixel_values=batch["pixel_values"]).logits
        got = merged.eval()(*inputs, pixel_values=batch["pixel_values"]).logits
        start = VisionLanguageModel.from_pretrained(tiny_world.student).eval()
        before = start(*inputs, pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - before).abs().max() > 1e-3  # the adapters did learn something
    # LoRA adapts the LLM: a stage that freezes it is refused with the reason
    with pytest.raises(ConfigError, match="train.lora: LoRA adapts the LLM, which this stage does not train"):
        build_objective(load_config(make_config(tiny_world, tmp_path / "pt", stage="pt", lora=LORA)), verbose=False)


@pytest.mark.slow
def test_killed_lora_run_resumes_exactly(tiny_world, tmp_path):
    _killed_then_resumed_equals_uninterrupted(tiny_world, tmp_path, 6, lora=LORA)


def test_a_model_key_set_beside_pretrained_is_an_error_naming_it(tiny_world, tmp_path):
    """A saved model keeps its own projector: ``model.projector=ldpv2`` beside ``model.pretrained`` was
    dropped without a word (final/config.json still said mlp2x_gelu)."""
    config = make_config(tiny_world, tmp_path / "run")
    for override, key in (
        ("model.projector=ldpv2", "model.projector"),
        ("model.vision_feature_layer=-1", "model.vision_feature_layer"),
    ):
        with pytest.raises(ConfigError, match=rf"^{key}: cannot apply to a pretrained model") as info:
            load_config(config, [override])
        assert "\n" not in str(info.value)
    done = subprocess.run(
        [sys.executable, "-m", "switchkd", "train", "--config", str(config), "model.projector=ldpv2"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.startswith("switchkd train: error: model.projector: cannot apply")
    assert not (tmp_path / "run").exists()
    load_config(config)  # the pretrained model alone is fine


def test_plan_prints_the_step_memory_and_what_fits(tiny_world, tmp_path, capsys):
    from switchkd.cli.main import main

    config = make_config(tiny_world, tmp_path / "run")
    assert main(["plan", "--config", str(config), "--gpus", "2", "--gpu-memory", "80GB", "--engine", "fsdp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fsdp on 2 GPU(s), per-GPU batch 4 x 2048 tokens")
    assert "teacher weights" in out and "a block of each head weight, rounded" not in out  # no mixed precision
    assert ": fits" in out and "largest per-GPU batch as configured: 128 or more" in out
    assert main(["plan", "--config", str(config), "--gpu-memory", "0.5GB", "train.mixed_precision=bf16"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "nothing fits" in out and "a block of each head weight, rounded" in out


def test_one_optimizer_step_per_group_also_at_an_epochs_end(tiny_world, tmp_path):
    """12 records, 4 a micro-batch, 2 micro-batches a step: epoch 0 is a full group and a short one, so
    step 3 starts epoch 1. Each step is one optimizer step (Adam's step count), also for the epoch's
    last group, whose micro-batches are all fetched before the loader's end is known (accelerate's
    ``accumulate`` took that end as the step's end and stepped after each of them)."""
    from safetensors import safe_open

    data = twelve_records(tiny_world, tmp_path)
    config = load_config(with_data(make_config(tiny_world, tmp_path / "run", grad_accum=2, max_steps=3), data))
    train(config)
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 0, 1]
    with safe_open(str(checkpoints(tmp_path / "run")[-1] / "optimizer.safetensors"), framework="pt") as f:
        counts = {float(f.get_tensor(k)) for k in f.keys() if k.endswith(".step")}
    assert counts == {3.0}


def test_cached_samples_train_exactly_as_loaded_ones_across_epochs(tiny_world, tmp_path):
    """``data.cache`` (DFT: the teacher's view too) changes nothing a run computes over several epochs:
    every logged loss and every weight bit for bit. It needs the training process to load the data."""
    runs = {}
    for name, cache in (("loaded", False), ("cached", True)):
        config = with_data(make_config(tiny_world, tmp_path / name, max_steps=7), twelve_records(tiny_world, tmp_path))
        runs[name] = train(load_config(config, [f"data.cache={str(cache).lower()}"]))
    assert curve_bits(tmp_path / "cached") == curve_bits(tmp_path / "loaded")
    same_weights(runs["loaded"].final_model, runs["cached"].final_model)
    with pytest.raises(ConfigError, match=r"data.cache: needs num_workers: 0"):
        load_config(config, ["data.cache=true", "data.num_workers=2"])
