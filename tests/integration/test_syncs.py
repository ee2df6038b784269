"""Host synchronisations of a whole DFT training step (student, teacher, switch pathway, fused head,
knee, pairs, backward, optimizer), on the accelerator's code path forced on the CPU (``gpu_path``).

Every sync that remains is named here with its reason; a new one fails the test. Per chunk of the loss
head: one per knee selection, to size its top-k (the teacher's, shared by Align and VSD; the student's;
the switch's). The alternative, pair sums over all V columns instead of the k selected, costs V / k
times the memory traffic. Everything else is once per step.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from switchkd.config import load_config
from switchkd.syncs import SyncCounter, gpu_path
from switchkd.training import setup
from switchkd.training.trainer import epoch_groups, train_step

PER_CHUNK = {("_local_scalar_dense", "losses/knee.py", "from_order"): 3}
PER_STEP = {
    ("_local_scalar_dense", "training/trainer.py", "train_step"): "the step's supervised tokens over all "
    "processes, the loss normaliser (one all-reduce and its value)",
    ("index (bool mask)", "losses/sequence.py", "supervised_positions"): "the targets at the supervised positions",
    ("index (bool mask)", "distillation/switch.py", "_hidden_states"): "the student's and the teacher's hidden "
    "states at the supervised positions (M rows: the loss head's input)",
    ("index (bool mask)", "distillation/switch.py", "run"): "the switch pathway's hidden states at those positions",
    ("index_put (bool mask)", "training/trainer.py", "forward_backward"): "the backward of those two gathers",
    ("_local_scalar_dense", "models/inputs.py", "merge_image_features"): "the check that image placeholders "
    "and image features agree in number (one line instead of a wrong merge), once per forward",
    ("_local_scalar_dense", "models/vlm.py", "run_llm"): "inside transformers' Qwen2 decoder: its attention-mask "
    "preparation asks whether the mask has padding, twice per forward",
}


def _step(world, tmp_path: Path, chunk_rows: int):
    cfg = {
        "model": {"pretrained": str(world.student)},
        "teacher": {"pretrained": str(world.teacher)},
        "data": {"train": str(world.paths["dft"]), "num_workers": 0, "length_grouped": False},
        "train": {
            "stage": "dft",
            "per_device_batch_size": 4,
            "max_steps": 2,
            "progress": False,
            "output_dir": str(tmp_path / "run"),
            "loss_chunk_rows": chunk_rows,
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = setup(load_config(path), resume=False, overwrite=False)
    group = next(epoch_groups(run))
    rows = sum(b["num_items"] for b in group)
    with gpu_path(), SyncCounter() as syncs:
        train_step(run, group)
    return syncs, rows


def _by_place(syncs: SyncCounter) -> dict[tuple[str, str, str], int]:
    out: dict = {}
    for (op, site), n in syncs.counts.items():
        file_line, function = site.split(" ")
        key = (op, file_line.rsplit(":", 1)[0], function)
        out[key] = out.get(key, 0) + n
    return out


def test_a_dft_step_synchronises_only_where_named(tiny_world, tmp_path):
    """Per chunk: exactly the named knee syncs; per step: the same named ones whatever the chunking."""
    per_step = []
    for chunk_rows in (8, 32):
        syncs, rows = _step(tiny_world, tmp_path / str(chunk_rows), chunk_rows)
        places = _by_place(syncs)
        unnamed = {k: v for k, v in places.items() if k not in PER_CHUNK and k not in PER_STEP}
        assert not unnamed, f"new host synchronisations:\n{syncs.table()}"
        for place, per_chunk in PER_CHUNK.items():
            assert places.get(place, 0) == per_chunk * -(-rows // chunk_rows), syncs.table()
        per_step.append({k: v for k, v in places.items() if k in PER_STEP})
    assert per_step[0] == per_step[1]
