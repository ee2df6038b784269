"""The loss head's host synchronisations per chunk on the accelerator's path (forced on the CPU): none
for the KL losses, one per knee selection for DBiLD (sizing its top-k; see tests/integration/test_syncs.py)."""

import pytest
import torch

from switchkd.losses import DistillLoss, loss_head
from switchkd.syncs import SyncCounter, gpu_path, sync_free
from tests.unit.losses.chunks import distiller_chunk_loss

M, H, V, CHUNK = 96, 32, 4_000, 16


def _head_syncs(name: str, fused: bool) -> SyncCounter:
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(M, H, generator=g).requires_grad_(True)
    h_t = torch.randn(M, 2 * H, generator=g)
    h_w = (h_t + 0.1 * torch.randn(M, 2 * H, generator=g)).requires_grad_(True)
    student = torch.nn.Linear(H, V, bias=False)
    teacher = torch.nn.Linear(2 * H, V, bias=False).requires_grad_(False)
    targets = torch.randint(0, V, (M,), generator=g)
    chunk = distiller_chunk_loss(DistillLoss(name), targets)
    pathways = {"student": (h_s, student), "teacher": (h_t, teacher), "switch": (h_w, teacher)}
    with gpu_path(), SyncCounter() as syncs:
        total, _ = loss_head(
            pathways, chunk, {"ce": 1.0, "align": 1.0, "vsd": 1.0}, vocab=V, chunk_rows=CHUNK, fused=fused
        )
        total.backward()
    return syncs


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("name", ["fkl", "rkl", "bild_rkl", "dbild_rkl", "dbild_fkl"])
def test_syncs_per_chunk(name, fused):
    syncs = _head_syncs(name, fused)
    if name.startswith("dbild"):  # one per selection: the teacher's, the student's, the switch's
        assert dict(syncs.counts) == {
            ("_local_scalar_dense", next(site for _, site in syncs.counts)): 3 * (M // CHUNK)
        }, syncs.table()
        assert all("knee.py" in site and "from_order" in site for _, site in syncs.counts)
    else:
        assert syncs.total() == 0, syncs.table()


def test_the_gpu_path_is_forced_only_inside_the_block():
    assert not sync_free("cpu") and sync_free("meta")
    with gpu_path():
        assert sync_free("cpu")
    assert not sync_free("cpu")
