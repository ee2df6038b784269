"""The GPU acceptance script runs end to end on the CPU at tiny sizes, so it cannot rot unseen."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_acceptance_script_runs_on_cpu():
    done = subprocess.run(
        ["bash", "benchmarks/gpu_acceptance.sh", "--device", "cpu", "--small"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = done.stdout[done.stdout.index("| check | result | s |") :]
    for check in ("gpu tests", "losses (bench_losses)", "DFT step, 0.5B <- 3B shapes", "switchkd eval, built-in world"):
        assert f"| {check} | " in table
    assert "FAILED" not in table and "planned" in table and "x fkl time" in table
