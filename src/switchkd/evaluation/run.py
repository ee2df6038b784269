"""Run a benchmark: generate answers through the inference code, score them, write JSON and a
markdown table; several models side by side.

    switchkd eval --model runs/student/final runs/teacher/final --benchmark pope --data eval/pope --out results
    accelerate launch -m switchkd eval ...      # the questions sharded over processes, answers merged

With an output folder, answers are appended and flushed batch by batch (one part file per process),
so a killed evaluation resumes without answering a question twice or losing one; the merged
predictions file is written when every question has an answer.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from switchkd.evaluation.benchmarks import Benchmark, Item, get_benchmark
from switchkd.inference.predict import Question, answer_questions, append_rows, read_answers
from switchkd.models.pathway import load_vlm
from switchkd.models.placement import placement

log = logging.getLogger("switchkd.eval")


def evaluate_model(
    model,
    benchmark: str | Benchmark,
    data_dir: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    answers_file: str | Path | None = None,
) -> tuple[dict, dict[str, str]]:
    """Metrics and the raw predictions of one model on one benchmark (a name, or a ``Benchmark``).

    Under several processes (``accelerate launch``/``torchrun``) each answers its share of the
    questions and every process returns the merged result. With ``answers_file`` the answers already
    in it (or in the part files of a killed run) are kept, and new ones are appended as they come."""
    bench = get_benchmark(benchmark)
    items = _items(bench, Path(data_dir), limit)
    state = _processes()
    answers_file = Path(answers_file) if answers_file is not None else None
    done = _consolidate(answers_file, state) if answers_file is not None else {}
    todo = [i for i in items if i.id not in done]
    mine = todo[state.process_index :: state.num_processes]
    progress = progress and state.is_main_process
    fresh = _answer(
        model, bench, mine, batch_size=batch_size, progress=progress, answers_file=answers_file, state=state
    )
    if state.num_processes > 1:
        fresh = {k: v for part in gather_object([fresh]) for k, v in part.items()}
    preds = {i.id: done.get(i.id, fresh.get(i.id)) for i in items}
    if answers_file is not None:
        state.wait_for_everyone()  # every part file is complete
        if state.is_main_process:
            _write_answers(answers_file, preds)
            for part in answers_file.parent.glob(f"{answers_file.name}.part-*"):
                part.unlink()
        state.wait_for_everyone()
    return bench.score(items, preds), preds


def _processes() -> PartialState:
    """The processes this evaluation runs on (one unless launched by accelerate or torchrun); without a
    GPU accelerate forms the process group only when told it runs on the CPU."""
    return PartialState(cpu=not torch.cuda.is_available())


def _items(bench: Benchmark, data_dir: Path, limit: int | None) -> list[Item]:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"benchmark data folder not found: {data_dir}")
    items = bench.load(data_dir)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"{bench.name}: no scorable questions in {data_dir}")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{bench.name}: question ids repeat in {data_dir}; answers could not be told apart")
    return items


def _answer(model, bench, items: list[Item], *, batch_size, progress, answers_file, state) -> dict[str, str]:
    """This process's answers, appended to its part file (flushed) batch by batch when there is one."""
    part = _part(answers_file, state.process_index) if answers_file is not None else None
    out: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(items) * state.num_processes
        bar = tqdm(total=total, desc=f"{bench.name} (all processes)", unit="question", dynamic_ncols=True)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        questions = [Question(i.id, i.prompt, i.image) for i in batch]
        answers = answer_questions(model, questions, batch_size=batch_size, max_new_tokens=bench.max_new_tokens)
        out.update(answers)
        if part is not None:
            append_rows(part, [{"question_id": k, "text": v} for k, v in answers.items()])
        if bar is not None:
            bar.update(len(batch) * state.num_processes)
    if bar is not None:
        bar.close()
    return out


def _part(answers_file: Path, rank: int) -> Path:
    return answers_file.with_name(f"{answers_file.name}.part-{rank}")


def _consolidate(answers_file: Path, state) -> dict[str, str]:
    """Answers of earlier runs, from the answers file and the part files of a killed run (whatever its
    number of processes). Every process reads them (a bad line is the same error in all of them, not
    one error and a hang); then the main process folds the parts into the answers file."""
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    parts = sorted(answers_file.parent.glob(f"{answers_file.name}.part-*"))
    found = {}
    for path in [answers_file, *parts]:
        rows = read_answers(path, ("question_id", "text"))
        found.update({str(qid): str(row["text"]) for qid, row in rows.items()})
    state.wait_for_everyone()  # nobody rewrites a file another process is still reading
    if state.is_main_process and parts:
        log.info("resuming %s: %d answers kept from an interrupted run", answers_file, len(found))
        _write_answers(answers_file, found)
        for part in parts:
            part.unlink()
    state.wait_for_everyone()
    return found


def _answer_lines(answers: dict[str, str]) -> str:
    return "".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in answers.items())


def _write_answers(path: Path, answers: dict[str, str]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(_answer_lines(answers))
    os.replace(tmp, path)


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
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, dict[str, dict]]:
    """Every model on every benchmark; with ``out_dir``, predictions (resumable), results.json and
    results.md. ``device``/``dtype`` as in ``placement`` (auto: the GPU in bf16 when there is one); under
    several processes each takes the GPU of its local rank."""
    benches = [get_benchmark(b) for b in benchmarks]  # an unknown name fails before any model loads
    state = _processes()
    device, torch_dtype = placement(device, dtype)
    if state.num_processes > 1 and device == "cuda":
        device = f"cuda:{state.local_process_index}"
    results: dict[str, dict[str, dict]] = {}
    for i, model_dir in enumerate(model_dirs):
        name = names[i] if names else Path(model_dir).name
        model = load_vlm(model_dir, dtype=torch_dtype, device=device)
        results[name] = {}
        for bench in benches:
            answers = Path(out_dir) / f"{name}.{bench.name}.predictions.jsonl" if out_dir is not None else None
            results[name][bench.name], _ = evaluate_model(
                model, bench, data_dir, limit=limit, batch_size=batch_size, progress=progress, answers_file=answers
            )
    if out_dir is not None and state.is_main_process:
        (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2))
        (Path(out_dir) / "results.md").write_text(markdown_table(results) + "\n")
    return results
