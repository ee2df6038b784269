"""The paper's ablations in miniature on the built-in world, as mean ± std over seeds.

    switchkd reproduce --seeds 3 --out runs/reproduce

Table 3: PT+SFT, DFT without the visual switch, DFT with it.
Table 4: the distillation loss: FKL, RKL, BiLD-FKL, BiLD-RKL, DBiLD-FKL, DBiLD-RKL (all DFT with the switch).
Table 5: training schemes: PT-SFT, DPT-SFT, PT-DFT, DPT-DFT.
Plots (with matplotlib): training curves of every loss term, and the knee on sorted teacher logits (Fig. 2).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from switchkd.config import ModelConfig
from switchkd.data.dataset import Collator, LlavaDataset
from switchkd.demo.benchmark import WORLD
from switchkd.demo.run import DemoConfig, prepare_world, run_stage, student_init, train_teacher
from switchkd.evaluation import evaluate_model
from switchkd.losses import LOSSES, knee_k, supervised_positions
from switchkd.models import VisionLanguageModel

log = logging.getLogger("switchkd.reproduce")


def _score(model_dir: Path, test_dir: Path) -> float:
    metrics, _ = evaluate_model(VisionLanguageModel.from_pretrained(model_dir), WORLD, test_dir, batch_size=32)
    return metrics["accuracy"]


def run_seed(cfg: DemoConfig) -> dict[str, float]:
    """Every ablation run of one seed; returns accuracy (%) per named run."""
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
        "PT+SFT": (pt, "sft", cfg.distill),
        "DFT w/o switch": (pt, "dft", replace(cfg.distill, visual_switch=False)),
        "DPT-SFT": (dpt, "sft", cfg.distill),
        "DPT-DFT": (dpt, "dft", cfg.distill),
    }
    runs.update(
        {
            f"loss {name}": (pt, "dft", replace(cfg.distill, loss=replace(cfg.distill.loss, name=name)))
            for name in LOSSES
        }
    )
    scores = {}
    for name, (start, stage, distill) in runs.items():
        folder = name.replace(" ", "_").replace("/", "").replace("+", "_")
        result = run_stage(
            cfg,
            folder,
            model=start,
            data=paths["dft"],
            stage=stage,
            steps=cfg.student_steps,
            lr=cfg.lr,
            teacher=teacher if stage == "dft" else None,
            distill=distill,
        )
        scores[name] = _score(result.final_model, test_dir)
        log.info("seed %d  %-16s %.1f", cfg.seed, name, scores[name])
    scores["teacher"] = _score(Path(teacher.pretrained), test_dir)
    return scores


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def tables(per_seed: list[dict[str, float]]) -> str:
    col = {k: [s[k] for s in per_seed] for k in per_seed[0]}
    sections = [
        (
            "Table 3: the visual switch",
            [
                ("PT+SFT", "PT+SFT"),
                ("DFT without switch", "DFT w/o switch"),
                ("DFT with switch (Switch-KD)", "loss dbild_rkl"),
            ],
        ),
        (
            "Table 4: the distillation loss (DFT with switch)",
            [(n.upper().replace("_", "-"), f"loss {n}") for n in LOSSES],
        ),
        (
            "Table 5: training schemes",
            [("PT-SFT", "PT+SFT"), ("DPT-SFT", "DPT-SFT"), ("PT-DFT", "loss dbild_rkl"), ("DPT-DFT", "DPT-DFT")],
        ),
    ]
    out = [f"Held-out accuracy (%) on the built-in world, {len(per_seed)} seed(s); teacher: {_cell(col['teacher'])}\n"]
    for title, rows in sections:
        out += [f"### {title}\n", "| run | accuracy |", "| --- | ---: |"]
        out += [f"| {label} | {_cell(col[key])} |" for label, key in rows]
        out.append("")
    return "\n".join(out)


def _pyplot():
    """matplotlib's pyplot on a file backend, or None when the plot extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _finish(plt, ax, *, labels: tuple[str, str, str], png: Path) -> bool:
    """Axis labels, legend and title (x, y, title), then the figure written to ``png`` and closed."""
    xlabel, ylabel, title = labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    ax.figure.tight_layout()
    ax.figure.savefig(png, dpi=120)
    plt.close(ax.figure)
    return True


def plot_curves(run_dir: Path, png: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    _, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "ce", "align", "vsd"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_yscale("log")
    return _finish(plt, ax, labels=("step", "loss", "Switch-KD training: loss terms"), png=png)


@torch.no_grad()
def plot_knee(teacher_dir: Path, dft_file: Path, png: Path) -> bool:
    """The teacher's sorted logits at one answer position, with the knee (paper Fig. 2)."""
    plt = _pyplot()
    if plt is None:
        return False
    model = VisionLanguageModel.from_pretrained(teacher_dir)
    ds = LlavaDataset.for_model(dft_file, dft_file.parent, model)
    batch = Collator(model.tokenizer.pad_token_id)([ds[0]])
    positions, _ = supervised_positions(batch["labels"])
    rows = model(
        batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"], logits_at=positions
    ).logits[:, : model.vocab_size]
    row = rows[0].float()
    k = int(knee_k(row[None])[0])
    values = row.sort(descending=True).values
    _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(values) + 1), values.numpy(), label="sorted teacher logits")
    ax.axvline(k, color="red", linestyle="--", label=f"knee k = {k}")
    return _finish(plt, ax, labels=("rank", "logit", "Dynamic top-k: the knee of the sorted logits"), png=png)


def run_reproduce(cfg: DemoConfig, seeds: int = 1) -> str:
    out = Path(cfg.out)
    per_seed = []
    for seed in range(seeds):
        per_seed.append(run_seed(replace(cfg, seed=seed, out=str(out / f"seed{seed}"))))
        (out / "scores.json").write_text(json.dumps(per_seed, indent=2))
    text = tables(per_seed)
    (out / "tables.md").write_text(text + "\n")
    first = out / "seed0"
    drew = plot_curves(first / "loss_dbild_rkl", out / "curves.png")
    drew = plot_knee(first / "teacher" / "final", first / "world" / "dft_train.json", out / "knee.png") and drew
    if not drew:
        text += "\n(plots skipped: pip install -e .[plot] for matplotlib)\n"
    return text
