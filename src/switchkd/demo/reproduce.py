"""The paper's ablations in miniature on the built-in world, over several full seeds, read against
their noise.

    switchkd reproduce --seeds 3 --out runs/reproduce

A seed changes everything: the world (images, questions), the teacher, the student's PT and its DFT.
Rows (each a normal switchkd run under ``<out>/seed<N>/``):

- Table 3: PT+SFT, DFT without the visual switch, DFT with it (Switch-KD: DBiLD-RKL).
- Table 4: the distillation loss: FKL, RKL, BiLD-FKL, BiLD-RKL, DBiLD-FKL, DBiLD-RKL (DFT with the switch).
- Table 5: training schemes: PT-SFT, DPT-SFT, PT-DFT, DPT-DFT.
- Table 6: the teacher's size: Switch-KD from a smaller and from a larger teacher than the main one,
  each on the student's shared pretrained encoder.
- Table 7 (beyond the paper): a student with another vision tower than the teacher's (SigLIP against
  CLIP, other width, image size, patch size and token count), distilled through the switch adapter.

The runs write ``scores.json`` (one 0/1 per question and run, per seed); ``report.py`` makes the
tables and plots from it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from switchkd.config import ModelConfig
from switchkd.data.images import batch_images, load_image
from switchkd.demo.benchmark import load_world
from switchkd.demo.report import DIAGNOSED, TEACHER_SIZES, diagnostic_means, report, run_folder
from switchkd.demo.stages import (
    DemoConfig,
    hetero_student_init,
    prepare_world,
    run_stage,
    score,
    student_init,
    train_teacher,
    train_teacher_variant,
)
from switchkd.diagnostics import encoder_distance
from switchkd.losses import LOSSES
from switchkd.models import VisionLanguageModel

log = logging.getLogger("switchkd.reproduce")


def feature_distance(student_dir: Path, teacher_dir: Path, test_dir: Path, limit: int = 64) -> float | None:
    """The encoders' feature distance (``diagnostics.encoder_distance``) of two saved models on the first
    ``limit`` test images, each reading them through its own image processor."""
    student = VisionLanguageModel.from_pretrained(student_dir)
    teacher = VisionLanguageModel.from_pretrained(teacher_dir)
    images = [load_image(p) for p in sorted({item.image for item in load_world(test_dir)})[:limit]]
    return encoder_distance(
        student,
        teacher,
        student_images=batch_images([student.image_reader.read(i) for i in images]),
        teacher_images=batch_images([teacher.image_reader.read(i) for i in images]),
    )


def run_seed(cfg: DemoConfig) -> dict[str, dict]:
    """Every run of one seed; returns, per named row, its score (and the teacher rows' scores)."""
    paths, tokenizer, mixed = prepare_world(cfg)
    test_dir = paths["test"].parent
    teacher_dir, encoder = train_teacher(cfg, tokenizer, mixed)
    teacher = ModelConfig(pretrained=str(teacher_dir))
    init = ModelConfig(pretrained=str(student_init(cfg, tokenizer, encoder)))
    pt_run = run_stage(cfg, "student_pt", model=init, data=paths["pt"], stage="pt", steps=cfg.pt_steps, lr=cfg.pt_lr)
    dpt_run = run_stage(
        cfg, "student_dpt", model=init, data=paths["pt"], stage="dpt", steps=cfg.pt_steps, lr=cfg.pt_lr, teacher=teacher
    )
    pt = ModelConfig(pretrained=str(pt_run.final_model))
    dpt = ModelConfig(pretrained=str(dpt_run.final_model))
    runs = {
        "PT+SFT": (pt, "sft", cfg.distill, None),
        "DFT w/o switch": (pt, "dft", replace(cfg.distill, visual_switch=False), teacher),
        "DPT-SFT": (dpt, "sft", cfg.distill, None),
        "DPT-DFT": (dpt, "dft", cfg.distill, teacher),
    }
    for name in LOSSES:
        runs[f"loss {name}"] = (pt, "dft", replace(cfg.distill, loss=replace(cfg.distill.loss, name=name)), teacher)
    hetero = ModelConfig(pretrained=str(hetero_student_init(cfg, tokenizer, mixed)))
    hetero_pt = run_stage(
        cfg, "hetero_pt", model=hetero, data=paths["pt"], stage="pt", steps=cfg.pt_steps, lr=cfg.pt_lr
    ).final_model
    hetero_pt = ModelConfig(pretrained=str(hetero_pt))
    runs["hetero PT+SFT"] = (hetero_pt, "sft", cfg.distill, None)
    runs["hetero DFT w/o switch"] = (hetero_pt, "dft", replace(cfg.distill, visual_switch=False), teacher)
    runs["hetero Switch-KD"] = (hetero_pt, "dft", cfg.distill, teacher)
    teachers = {"teacher": teacher_dir}
    for size in TEACHER_SIZES:
        variant = replace(cfg, teacher_width=size.width, teacher_layers=size.layers)
        folder = train_teacher_variant(
            variant, f"teacher_{size.name}", tokenizer=tokenizer, mixed=mixed, encoder_from=encoder
        )
        teachers[f"teacher {size.name}"] = folder
        runs[f"teacher {size.name} DFT"] = (pt, "dft", cfg.distill, ModelConfig(pretrained=str(folder)))
    scores: dict[str, dict] = {}
    for name, (start, stage, distill, from_teacher) in runs.items():
        result = run_stage(
            cfg,
            run_folder(name),
            model=start,
            data=paths["dft"],
            stage=stage,
            steps=cfg.student_steps,
            lr=cfg.lr,
            teacher=from_teacher,
            distill=distill,
            diagnose=name in DIAGNOSED,
        )
        scores[name] = score(result.final_model, test_dir)
        if name in DIAGNOSED:
            scores[name]["feature_distance"] = feature_distance(result.final_model, teacher_dir, test_dir)
        log.info("seed %d  %-20s %.1f", cfg.seed, name, scores[name]["accuracy"])
    scores["PT start"] = {"feature_distance": feature_distance(pt_run.final_model, teacher_dir, test_dir)}
    for name, folder in teachers.items():
        scores[name] = score(folder, test_dir)
    return scores


def _add_diagnostics(scores: dict, seed_dir: Path) -> None:
    for key in DIAGNOSED:
        if key in scores:
            means = diagnostic_means(seed_dir / run_folder(key))
            scores[key]["grad_vision"] = {k.removeprefix("grad_vision_"): v for k, v in means.items()}


def run_reproduce(cfg: DemoConfig, seeds: int = 1) -> str:
    """All runs for ``seeds`` seeds, the tables (``tables.md``), the scores (``scores.json``, with one
    0/1 per question) and the plots; returns the tables and what was drawn."""
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in range(seeds):
        seed_dir = out / f"seed{seed}"
        scores = run_seed(replace(cfg, seed=seed, out=str(seed_dir)))
        _add_diagnostics(scores, seed_dir)
        per_seed.append(scores)
        (out / "scores.json").write_text(json.dumps(per_seed))
    minutes = (time.perf_counter() - started) / 60
    kept = " (runs kept by --resume not counted)" if cfg.reuse else ""
    return report(out, f"Wall time: {minutes:.0f} min for {seeds} seed(s){kept}.")
