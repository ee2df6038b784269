"""The built-in demo: a synthetic visual world, its tokenizer, small model presets, the world
benchmark, the end-to-end run (``switchkd demo``) and the paper's ablations in miniature
(``switchkd reproduce``). Only the CLI and the tests import this package."""

from switchkd.demo.benchmark import WORLD
from switchkd.demo.reproduce import run_reproduce
from switchkd.demo.run import run_demo
from switchkd.demo.stages import DemoConfig

__all__ = ["WORLD", "DemoConfig", "run_demo", "run_reproduce"]
