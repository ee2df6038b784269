"""Step checkpoints (optimizer, scheduler, RNG states, model, ``TrainState``), resume, and the final model.

Every folder is written under a ``.tmp-`` name and renamed into place only when complete, so a kill
never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

from accelerate.utils import gather_object

from switchkd.training.run import Run, TrainState

log = logging.getLogger("switchkd.train")

STATE_NAME = "trainer_state.json"


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


def save_checkpoint(run: Run) -> TrainState:
    """Write ``checkpoints/step-N`` (collective: every process calls it) and drop the oldest beyond
    ``save_total_limit``. Returns the saved state, whose skip counts are summed over processes."""
    acc, step = run.accelerator, run.state.step
    final = run.output_dir / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(f".tmp-{final.name}")
    state = TrainState(step, run.state.epoch, run.state.position, skipped_everywhere(run))
    if run.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp / "state"))
    acc.wait_for_everyone()
    if run.is_main:
        (tmp / STATE_NAME).write_text(json.dumps(state.to_json()))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        keep = run.cfg.train.save_total_limit
        for old in checkpoints(run.output_dir)[:-keep] if keep is not None else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return state


def restore_latest(run: Run) -> None:
    """Load the newest complete checkpoint of the run's output folder into ``run`` (no-op without one)."""
    found = checkpoints(run.output_dir)
    if not found:
        log.info("no checkpoint in %s: starting from step 0", run.output_dir)
        return
    latest = found[-1]
    run.accelerator.load_state(str(latest / "state"))
    state = TrainState.from_json(json.loads((latest / STATE_NAME).read_text()))
    if not run.is_main:
        state.skipped = Counter()  # the stored counts are global: one process carries them on
    run.state = state
    log.info("resumed from %s (step %d)", latest, state.step)


def save_model(run: Run, directory: Path) -> None:
    """The student alone, as a switchkd model folder (collective: gathers FSDP/DeepSpeed shards)."""
    acc = run.accelerator
    acc.wait_for_everyone()
    student = acc.unwrap_model(run.objective).student
    state = acc.get_state_dict(run.objective)
    if run.is_main:
        tmp = directory.with_name(f".tmp-{directory.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        student.save_pretrained(
            tmp, state_dict={k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        )
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    acc.wait_for_everyone()
