"""The built-in end-to-end run: a synthetic visual world, a teacher, and a student distilled with
Switch-KD, evaluated against a student trained without a teacher.

    switchkd demo --out runs/demo            # about 3 minutes on 2 CPU cores, no downloads

    from switchkd.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig(out="runs/demo"))

Steps (each a normal switchkd training run, with its config, log and checkpoints under --out):
  1. the world: seeded images of shapes, captions (PT data) and questions (DFT data, test split)
  2. a tokenizer trained on the world's text (ChatML special tokens)
  3. the teacher: CLIP-style encoder + the larger Qwen2 LLM, trained on captions and questions in two
     phases; the phase-1 encoder stands for the pretrained encoder teacher and student share
  4. the student: the smaller LLM, its vision tower from that shared encoder; PT trains its projector
  5. from the same PT checkpoint: SFT (no teacher, the baseline) and DFT (Switch-KD), same steps
  6. all three answer the held-out questions; the table is printed and saved
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from switchkd.config import ModelConfig
from switchkd.demo.plots import plot_kinds, pyplot
from switchkd.demo.stages import DemoConfig, prepare_world, run_stage, score, student_init, train_teacher
from switchkd.evaluation import markdown_table
from switchkd.evaluation.stats import Difference, accuracy_interval, paired_difference

log = logging.getLogger("switchkd.demo")


def run_demo(cfg: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log.info("[1/6] writing the world and its tokenizer to %s", out)
    paths, tokenizer, mixed = prepare_world(cfg)
    log.info("[2/6] training the teacher (%d steps)", cfg.teacher_steps)
    teacher_dir, encoder = train_teacher(cfg, tokenizer, mixed)
    log.info("[3/6] student PT: projector only (%d steps)", cfg.pt_steps)
    init = student_init(cfg, tokenizer, encoder)
    pt = run_stage(
        cfg,
        "student_pt",
        model=ModelConfig(pretrained=str(init)),
        data=paths["pt"],
        stage="pt",
        steps=cfg.pt_steps,
        lr=cfg.pt_lr,
    )
    start = ModelConfig(pretrained=str(pt.final_model))
    log.info("[4/6] student SFT baseline (%d steps, no teacher)", cfg.student_steps)
    sft = run_stage(cfg, "student_sft", model=start, data=paths["dft"], stage="sft", steps=cfg.student_steps, lr=cfg.lr)
    log.info("[5/6] student DFT with Switch-KD (%d steps)", cfg.student_steps)
    dft = run_stage(
        cfg,
        "student_switchkd",
        model=start,
        data=paths["dft"],
        stage="dft",
        steps=cfg.student_steps,
        lr=cfg.lr,
        teacher=ModelConfig(pretrained=str(teacher_dir)),
    )
    log.info("[6/6] evaluating on %s", paths["test"])
    models = {"teacher": teacher_dir, "student (PT+SFT)": sft.final_model, "student (Switch-KD)": dft.final_model}
    results, correct = {}, {}
    for name, path in models.items():
        metrics = score(path, paths["test"].parent, limit=cfg.eval_limit)
        correct[name] = metrics.pop("correct")
        results[name] = {"world": metrics | {"interval": list(accuracy_interval([correct[name]]))}}
    gain = paired_difference([(correct["student (Switch-KD)"], correct["student (PT+SFT)"])])
    table = world_table(results) + "\n\n" + gain_line(gain, len(correct["student (PT+SFT)"]))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table + "\n\n" + markdown_table(results) + "\n")
    plot = draw_kinds(results, out / "kinds.png")
    summary = {
        "results": results,
        "table": table,
        "plot": plot,
        "student": str(dft.final_model),
        "chat": f"switchkd chat --model {dft.final_model} --image {first_test_image(paths)} --interactive",
        "seconds": time.perf_counter() - started,
    }
    return summary


def first_test_image(paths: dict) -> str:
    row = json.loads(paths["test"].read_text().splitlines()[0])
    return str(paths["test"].parent / row["image"])


def world_table(results: dict) -> str:
    """Accuracy (%) overall with its 95 % bootstrap interval, and per question type, one row per model."""
    types = sorted({t for r in results.values() for t in r["world"]["per_type"]})
    lines = [
        "| model | all | 95 % interval | " + " | ".join(types) + " |",
        "| --- |" + " ---: |" * (len(types) + 2),
    ]
    for name, r in results.items():
        w = r["world"]
        low, high = w["interval"]
        kinds = " | ".join(f"{w['per_type'][t]:.1f}" for t in types)
        lines.append(f"| {name} | {w['accuracy']:.1f} | [{low:.1f}, {high:.1f}] | {kinds} |")
    return "\n".join(lines)


def gain_line(gain: Difference, questions: int) -> str:
    return (
        f"Switch-KD - SFT: {gain.mean:+.1f} points, 95 % interval [{gain.low:+.1f}, {gain.high:+.1f}] "
        f"(paired bootstrap over the {questions} questions; one seed, so training noise is not in it): "
        f"{gain.reading()}."
    )


def draw_kinds(results: dict, png: Path) -> Path | None:
    """The per-kind accuracy bars of the three models (None without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return None
    scores = [{name: r["world"] for name, r in results.items()}]
    return plot_kinds(plt, scores, [(name.removeprefix("student "), name) for name in results], png=png)
