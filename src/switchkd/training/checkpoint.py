"""Step checkpoints, resume, and the final model.

A checkpoint of a single-process or DDP run is safetensors and JSON only, so resume never unpickles
anything: ``model.safetensors`` (the objective's weights), ``optimizer.safetensors`` +
``optimizer.json``, ``rng-<rank>.json`` (Python, NumPy, torch and CUDA generators), and
``trainer_state.json`` (``TrainState``, the scheduler, the grad scaler, and the SHA-256 of every
other file). An FSDP2 run (``train.distributed: fsdp``) writes the same files with the weights and
optimizer state as one safetensors file per process (``sharding.save_shards``): no pickle either.
DeepSpeed (GPU runs, through accelerate) shards the optimizer; its checkpoints keep the engine's own
files (written by accelerate under ``state/``), checksummed like the rest. Those are pickles, and
DeepSpeed unpickles its own without restriction: before any engine loads them, every one must load
under torch's weights-only unpickler (tensors, containers and the three DeepSpeed classes its ZeRO
files hold), and a checkpoint holding anything else is refused like a damaged one.

Every folder is written under a ``.tmp-`` name and renamed into place only when complete, so a kill
never leaves a checkpoint that looks finished; resume verifies the checksums and falls back, with a
warning, to the newest complete and intact checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_module_weights
from safetensors.torch import save_model as save_module_weights

from switchkd.models.vlm import file_sha256
from switchkd.training import optimizer_files, sharding
from switchkd.training.lora import merge_lora
from switchkd.training.run import Run, TrainState

log = logging.getLogger("switchkd.train")

STATE_NAME = "trainer_state.json"
FORMAT = 1


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first (a half-written one is a .tmp folder, never listed)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_NAME).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def skipped_everywhere(run: Run) -> Counter:
    """Skipped-sample counts summed over processes (each process counts the batches it saw). Collective."""
    if run.accelerator.num_processes == 1:
        return Counter(run.state.skipped)
    total: Counter = Counter()
    for part in gather_object([dict(run.state.skipped)]):
        total.update(part)
    return total


def _engine(run: Run) -> bool:
    """Whether an engine of accelerate's (DeepSpeed, or FSDP through accelerate) holds the state."""
    return run.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_checkpoint(run: Run) -> TrainState:
    """Write ``checkpoints/step-N`` (collective: every process calls it) and drop the oldest beyond
    ``save_total_limit``. Returns the saved state, whose skip counts are summed over processes."""
    acc, step = run.accelerator, run.state.step
    final = run.output_dir / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(f".tmp-{final.name}")
    state = TrainState(step, run.state.epoch, run.state.position, skipped_everywhere(run))

    def prepare():
        if run.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write():
        if sharding.is_sharded(run.objective):
            sharding.save_shards(run.objective, run.optimizer, tmp)
        elif _engine(run):
            acc.save_state(str(tmp / "state"))
        else:
            _save_weights_and_optimizer(run, tmp)
        (tmp / f"rng-{acc.process_index}.json").write_text(json.dumps(_rng_state()))

    def publish():
        if run.is_main:
            _write_state(run, tmp, state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)

    for part in (prepare, write, publish):
        _together(run, tmp, final, part)
    if run.is_main:
        keep = run.cfg.train.save_total_limit
        for old in checkpoints(run.output_dir)[:-keep] if keep is not None else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return state


def _together(run: Run, tmp: Path, final: Path, part) -> None:
    """Run one part of a collective write on every process, then agree: a part that failed on any
    process (a full disk on one node) fails on all of them, so none is left waiting at a barrier. A
    failed write is one error naming the folder, and the half-written ``.tmp`` folder is removed."""
    error = None
    try:
        part()
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        error = OSError(f"cannot write {final}: {reason}")
    except Exception as exc:  # noqa: BLE001 - told to the other processes, then raised here as it is
        error = exc
    if run.accelerator.num_processes > 1:
        told = gather_object([None if error is None else (isinstance(error, OSError), str(error))])
        failed = [(rank, f) for rank, f in enumerate(told) if f is not None]
        if error is None and failed:
            rank, (disk, message) = failed[0]
            error = OSError(message) if disk else RuntimeError(f"process {rank} failed to write {final}: {message}")
    if error is None:
        return
    if run.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    raise error from None


def _write_state(run: Run, tmp: Path, state: TrainState) -> None:
    """trainer_state.json: the step state, scheduler and scaler, and the checksum of every other file."""
    acc = run.accelerator
    meta = {"format": FORMAT, "run_id": run.run_id, "state": state.to_json(), "scheduler": _scheduler_state(run)}
    meta["world_size"] = acc.num_processes
    if acc.scaler is not None:
        meta["scaler"] = acc.scaler.state_dict()
    meta["sha256"] = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / STATE_NAME).write_text(json.dumps(meta))


def _save_weights_and_optimizer(run: Run, folder: Path) -> None:
    """Main process: the objective's weights and the optimizer state (replicated under DDP)."""
    if not run.is_main:
        return
    save_module_weights(run.accelerator.unwrap_model(run.objective), str(folder / "model.safetensors"))
    tensors, meta = optimizer_files.flatten(run.optimizer)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(meta))


def _scheduler_state(run: Run) -> dict:
    return {k: v for k, v in run.scheduler.state_dict().items() if k != "lr_lambdas"}


def _rng_state() -> dict:
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(saved: dict) -> None:
    version, words, gauss = saved["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(saved["torch"], dtype=torch.uint8))
    if "cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in saved["cuda"]])


def damage(folder: Path, run_id: str, *, engine: bool = False) -> str | None:
    """Why ``folder`` cannot be resumed by run ``run_id`` (unreadable state, another run's checkpoint, a
    missing file, a checksum that does not match, with ``engine`` an engine file that is more than
    tensor data), or None when it is complete, intact and its own."""
    try:
        meta = json.loads((folder / STATE_NAME).read_text())
        sums = meta["sha256"]
        if meta.get("format") != FORMAT or not isinstance(sums, dict):
            return f"{STATE_NAME} is not a switchkd checkpoint of format {FORMAT}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{STATE_NAME} is unreadable ({type(exc).__name__})"
    if meta.get("run_id") != run_id:
        return f"it was written by another run ({meta.get('run_id')}, this is {run_id})"
    for name, want in sums.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != want:
            return f"{name} does not match its checksum"
    return unsafe_engine_file(folder / "state") if engine else None


def unsafe_engine_file(state: Path) -> str | None:
    """The first file under an engine's ``state`` folder that is a pickle holding more than tensor data
    (it must load under torch's weights-only unpickler), or a pickle that cannot be checked; None when
    all are safe. Text files (DeepSpeed's ``latest`` tag, its ``zero_to_fp32.py``) are never loaded."""
    with torch.serialization.safe_globals(_engine_classes()):
        for path in sorted(p for p in state.rglob("*") if p.is_file()):
            if zipfile.is_zipfile(path):
                try:
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception as exc:  # noqa: BLE001 - any refusal of the restricted unpickler
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    return f"{path.relative_to(state.parent)} holds more than tensor data ({first[:160]})"
            elif path.suffix in (".pkl", ".pt", ".bin", ".pth") or _first_byte(path) == b"\x80":
                return f"{path.relative_to(state.parent)} is a raw pickle, which cannot be checked"
    return None


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(1)


def _engine_classes() -> list:
    """The non-torch classes DeepSpeed's ZeRO checkpoints hold (found by reading its ZeRO-2 files)."""
    if importlib.util.find_spec("deepspeed") is None:
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def restore_latest(run: Run) -> None:
    """Load the newest complete and intact checkpoint of the output folder into ``run`` (no-op without
    one; damaged ones are skipped with a warning). Every process loads the one the main process chose."""
    found = checkpoints(run.output_dir)
    choice = [None]
    if run.is_main:
        for folder in reversed(found):
            problem = damage(folder, run.run_id, engine=_engine(run))
            if problem is None:
                choice = [str(folder)]
                break
            log.warning("checkpoint %s is skipped: %s; trying the one before it", folder, problem)
    if run.accelerator.num_processes > 1:
        broadcast_object_list(choice)
    if choice[0] is None:
        if found:
            raise ValueError(f"train.output_dir: no intact checkpoint in {run.output_dir / 'checkpoints'}")
        log.info("no checkpoint in %s: starting from step 0", run.output_dir)
        return
    error = None
    try:
        _load(run, Path(choice[0]))
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError, IndexError, OSError) as exc:
        # The checksums matched but a file is not what this format writes (e.g. a forged checksum list).
        error = f"checkpoint {choice[0]} cannot be loaded: {type(exc).__name__}: {exc}"
    if run.accelerator.num_processes > 1:  # one process failing (its own shard) fails all: none waits alone
        told = [m for m in gather_object([error]) if m is not None]
        error = error or (told[0] if told else None)
    if error is not None:
        raise ValueError(error)


def _load(run: Run, folder: Path) -> None:
    acc = run.accelerator
    meta = json.loads((folder / STATE_NAME).read_text())
    written = int(meta.get("world_size", acc.num_processes))
    if written != acc.num_processes:  # each process's RNG states and data position are its own
        raise ValueError(
            f"it was written by {written} process(es) and this run has {acc.num_processes}: resume with {written}"
        )
    if sharding.is_sharded(run.objective):
        sharding.load_shards(run.objective, run.optimizer, folder)
    elif _engine(run):
        acc.load_state(str(folder / "state"))
    else:
        _load_weights_and_optimizer(run, folder)
    run.scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(run.scheduler.lr_lambdas)})
    if acc.scaler is not None and "scaler" in meta:
        acc.scaler.load_state_dict(meta["scaler"])
    rng = folder / f"rng-{acc.process_index}.json"
    _set_rng_state(json.loads(rng.read_text()))
    state = TrainState.from_json(meta["state"])
    if not run.is_main:
        state.skipped = Counter()  # the stored counts are global: one process carries them on
    run.state = state
    log.info("resumed from %s (step %d)", folder, state.step)


def _load_weights_and_optimizer(run: Run, folder: Path) -> None:
    model = run.accelerator.unwrap_model(run.objective)
    device = next(model.parameters()).device
    load_module_weights(model, str(folder / "model.safetensors"), strict=True, device=str(device))
    meta = json.loads((folder / "optimizer.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    run.optimizer.load_state_dict(optimizer_files.unflatten(tensors, meta))


def save_model(run: Run, directory: Path) -> None:
    """The student alone, as a switchkd model folder (collective: gathers FSDP/DeepSpeed shards)."""
    acc = run.accelerator
    acc.wait_for_everyone()
    student = acc.unwrap_model(run.objective).student
    merge_lora(student)  # LoRA: the final model is the merged one (training is over)
    if sharding.is_sharded(run.objective):
        own = sharding.gather_student(run.objective)
    else:
        state = acc.get_state_dict(run.objective)
        own = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    tmp = directory.with_name(f".tmp-{directory.name}")

    def write():
        if run.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            student.save_pretrained(tmp, state_dict=own)
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)

    _together(run, tmp, directory, write)
