"""A run owns its output folder: a lock while it writes, and a run id that its checkpoints carry.

A folder that already holds a run (its checkpoints, final model or log) is continued only with
``--resume`` and replaced only with ``--overwrite``, which removes that run's files and nothing else;
resume uses only checkpoints that carry the folder's run id.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path

LOCK_NAME = ".lock"
RUN_NAME = "run.json"
PROGRESS = ("checkpoints", "final", "log.jsonl")
RUN_FILES = (*PROGRESS, "config.yaml", RUN_NAME)  # what --overwrite removes; nothing else in the folder


def claim(output_dir: Path, *, resume: bool, overwrite: bool) -> str:
    """Lock ``output_dir`` for this process and return the run id (main process only)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _lock(output_dir)
    try:
        return _run_id(output_dir, resume=resume, overwrite=overwrite)
    except BaseException:
        release(output_dir)
        raise


def run_id_of(output_dir: Path) -> str:
    return json.loads((output_dir / RUN_NAME).read_text())["run_id"]


def release(output_dir: Path) -> None:
    """Remove the lock if this process holds it."""
    path = output_dir / LOCK_NAME
    if _holder(path) == {"pid": os.getpid(), "host": socket.gethostname()}:
        path.unlink(missing_ok=True)


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(holder: dict) -> bool:
    """Whether the lock's process may still run: on another host (or unreadable) we cannot tell."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(output_dir: Path) -> None:
    path = output_dir / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(path)
            if _alive(holder):
                raise ValueError(
                    f"train.output_dir: {output_dir} is in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}); wait for it, or delete {path} if that run is gone"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process has ended (e.g. killed)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        return
    raise ValueError(f"train.output_dir: could not lock {output_dir}: another run keeps taking it")


def _run_id(output_dir: Path, *, resume: bool, overwrite: bool) -> str:
    run_file = output_dir / RUN_NAME
    held = [name for name in PROGRESS if (output_dir / name).exists()]  # a run got somewhere here
    if resume and run_file.is_file():
        return run_id_of(output_dir)
    if held and not resume:
        if not overwrite:
            raise ValueError(
                f"train.output_dir: {output_dir} holds a run ({', '.join(held)}): pass --resume to continue it, "
                "or --overwrite to replace it"
            )
        for name in RUN_FILES:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    run_id = uuid.uuid4().hex
    run_file.write_text(json.dumps({"run_id": run_id}))
    return run_id
