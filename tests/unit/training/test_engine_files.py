"""Engine checkpoint files (FSDP, DeepSpeed) are pickles: each is read by torch's weights-only
unpickler before any engine loads it, and a checkpoint holding anything more is refused."""

import importlib.util
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from switchkd.training.checkpoint import unsafe_engine_file


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _engine_folder(tmp_path: Path) -> Path:
    """What accelerate writes for an engine: torch.save'd tensors and plain state, a text tag, a script."""
    state = tmp_path / "step" / "state"
    (state / "pytorch_model").mkdir(parents=True)
    torch.save({"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)}, state / "model.bin")
    torch.save({"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}, state / "optimizer.bin")
    torch.save({"step": 7, "shape": torch.Size([4, 4])}, state / "random_states_0.pkl")
    (state / "pytorch_model" / "latest").write_text("pytorch_model")
    (state / "pytorch_model" / "zero_to_fp32.py").write_text("import os\n")
    return state


def test_plain_engine_files_pass(tmp_path):
    assert unsafe_engine_file(_engine_folder(tmp_path)) is None


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "pytorch_model/mp_rank_00_model_states.pt"])
def test_a_planted_object_is_refused_and_never_run(tmp_path, name):
    state = _engine_folder(tmp_path)
    marker = tmp_path / "executed"
    torch.save({"w": torch.ones(1), "hook": _Payload(marker)}, state / name)
    problem = unsafe_engine_file(state)
    assert problem.startswith(f"state/{name} holds more than tensor data (") and "\n" not in problem
    assert not marker.exists()


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "scheduler.bin", "pytorch_model/notes"])
def test_a_raw_pickle_cannot_be_checked_and_is_refused(tmp_path, name):
    state = _engine_folder(tmp_path)
    marker = tmp_path / "executed"
    (state / name).write_bytes(pickle.dumps(_Payload(marker)))
    assert unsafe_engine_file(state) == f"state/{name} is a raw pickle, which cannot be checked"
    assert not marker.exists()


_DEEPSPEED_SAVE = """
import os, sys, torch, deepspeed
from switchkd.training.checkpoint import unsafe_engine_file
deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 2},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
engine.backward(engine(torch.randn(1, 4)).sum())
engine.step()
engine.save_checkpoint(os.path.join(sys.argv[1], "pytorch_model"))
print("verdict:", unsafe_engine_file(__import__("pathlib").Path(sys.argv[1])))
"""


@pytest.mark.slow
def test_a_real_deepspeed_zero2_checkpoint_passes(tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0"}
    env.update(WORLD_SIZE="1", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    script = tmp_path / "save.py"
    script.write_text(_DEEPSPEED_SAVE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "state")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "state").rglob("*.pt"))) == 2  # the engine's model and ZeRO optimizer files
    assert "verdict: None" in done.stdout, done.stdout[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
