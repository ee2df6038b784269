"""Benchmark scorers, loaders and the evaluation runner."""

from switchkd.evaluation.benchmarks import BENCHMARKS, Item, get_benchmark
from switchkd.evaluation.run import evaluate_model, markdown_table, run_eval
from switchkd.evaluation.scorers import normalize_answer, pope_metrics, vqa_accuracy

__all__ = [
    "BENCHMARKS",
    "Item",
    "evaluate_model",
    "get_benchmark",
    "markdown_table",
    "normalize_answer",
    "pope_metrics",
    "run_eval",
    "vqa_accuracy",
]
