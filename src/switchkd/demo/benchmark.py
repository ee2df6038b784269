"""The world benchmark: the demo's held-out questions, scored per question kind.

Short answers by exact match, yes/no by the POPE reading, choices by the letter, with the same
scorers as the paper's benchmarks. ``evaluate_model(model, WORLD, folder)`` runs it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from switchkd.data.images import resolve_image_path
from switchkd.evaluation import scorers
from switchkd.evaluation.benchmarks import Benchmark, Item, mean_percent, read_jsonl


def load_world(data_dir: Path) -> list[Item]:
    """``test.jsonl`` written by ``write_world`` (question_id, image, text, answer, type[, options])."""
    qfile = data_dir / "test.jsonl"
    if not qfile.is_file():
        raise FileNotFoundError(f"{qfile} not found: a folder written by the built-in world has one")
    return [
        Item(
            q["question_id"],
            q["text"],
            str(resolve_image_path(data_dir, q["image"])),
            {"answer": q["answer"], "type": q["type"], "options": q.get("options", [])},
        )
        for q in read_jsonl(qfile)
    ]


def is_correct(pred: str, item: Item) -> bool:
    if item.meta["type"] == "choice":
        return scorers.extract_choice(pred, item.meta["options"]) == item.meta["answer"]
    if item.meta["type"] == "exists":
        return scorers.pope_answer(pred)[0] == item.meta["answer"]
    return scorers.exact_match(pred, item.meta["answer"])


def score_world(items: list[Item], preds: dict[str, str]) -> dict:
    by_type: dict[str, list[bool]] = defaultdict(list)
    for i in items:
        by_type[i.meta["type"]].append(is_correct(preds.get(i.id, ""), i))
    per_type = {t: mean_percent(v) for t, v in sorted(by_type.items())}
    return {"accuracy": mean_percent(c for v in by_type.values() for c in v), "per_type": per_type, "n": len(items)}


WORLD = Benchmark(
    "world", load_world, score_world, max_new_tokens=12, description="the built-in world's held-out questions"
)
