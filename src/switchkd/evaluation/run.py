"""Run a benchmark: generate answers through the inference code, score them, write JSON and a
markdown table; several models side by side.

    switchkd eval --model runs/student/final runs/teacher/final --benchmark pope --data eval/pope
"""

from __future__ import annotations

import json
from pathlib import Path

from switchkd.evaluation.benchmarks import Benchmark, get_benchmark
from switchkd.inference.predict import Question, answer_questions
from switchkd.models import VisionLanguageModel


def evaluate_model(
    model,
    benchmark: str | Benchmark,
    data_dir: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[dict, dict[str, str]]:
    """Metrics and the raw predictions of one model on one benchmark (a name, or a ``Benchmark``)."""
    bench = get_benchmark(benchmark)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"benchmark data folder not found: {data_dir}")
    items = bench.load(data_dir)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"{bench.name}: no scorable questions in {data_dir}")
    questions = [Question(i.id, i.prompt, i.image) for i in items]
    preds = answer_questions(
        model, questions, batch_size=batch_size, max_new_tokens=bench.max_new_tokens, progress=progress
    )
    return bench.score(items, preds), preds


def headline(metrics: dict) -> float | None:
    for key in ("accuracy", "f1", "perception"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """``results[model][benchmark] = metrics`` as one table (headline metric per benchmark)."""
    benches = sorted({b for per in results.values() for b in per})
    lines = ["| model | " + " | ".join(benches) + " |", "| --- |" + " ---: |" * len(benches)]
    for model, per in results.items():
        cells = []
        for b in benches:
            value = headline(per.get(b, {}))
            cells.append("–" if value is None else f"{value:.1f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_eval(
    model_dirs: list[str],
    benchmarks: list[str | Benchmark],
    data_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    names: list[str] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, dict]]:
    """Every model on every benchmark; with ``out_dir``, predictions, results.json and results.md."""
    benches = [get_benchmark(b) for b in benchmarks]  # an unknown name fails before any model loads
    results: dict[str, dict[str, dict]] = {}
    for i, model_dir in enumerate(model_dirs):
        name = names[i] if names else Path(model_dir).name
        model = VisionLanguageModel.from_pretrained(model_dir)
        results[name] = {}
        for bench in benches:
            metrics, preds = evaluate_model(
                model, bench, data_dir, limit=limit, batch_size=batch_size, progress=progress
            )
            results[name][bench.name] = metrics
            if out_dir is not None:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}.{bench.name}.predictions.jsonl").write_text(
                    "".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in preds.items())
                )
    if out_dir is not None:
        (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2))
        (Path(out_dir) / "results.md").write_text(markdown_table(results) + "\n")
    return results
