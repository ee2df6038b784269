"""switchkd: Switch-KD (visual-switch knowledge distillation) for vision-language models."""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier sleep instead of spinning (unless the user chose otherwise:
# OMP_WAIT_POLICY=ACTIVE). A spinning thread keeps its core while the main thread runs Python, NumPy's
# sort or a small op; with any other CPU-bound process on the machine (a DataLoader worker, another
# job) they fight for the cores, and DBiLD's many mid-sized ops took 3-4x their quiet time
# (benchmarks/bench_losses.py --contend). libgomp reads it once, when torch loads it: it takes effect
# where switchkd is imported before torch (the CLI, `python -m switchkd`, torchrun -m switchkd).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
