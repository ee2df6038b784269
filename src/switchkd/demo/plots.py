"""The demo's and the ablations' plots (matplotlib, the ``plot`` extra): each function draws one PNG
from run folders or scores and returns its path, or None when there was nothing to draw."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from switchkd.data.dataset import Collator, LlavaDataset
from switchkd.losses import knee_k, supervised_positions
from switchkd.models import VisionLanguageModel


def pyplot():
    """matplotlib's pyplot on a file backend, or None when the plot extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _log(run_dir: Path) -> list[dict]:
    """A run's logged rows; none when the run folder is not there (a report from scores alone)."""
    log = run_dir / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def _save(plt, fig, png: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _log_lines(plt, lines: list[tuple], png: Path, *, ylabel: str, title: str, legend_size: int) -> Path | None:
    """``lines`` ((rows, key, style, label, colour or None)) over steps on one log-scale figure; a line
    needs two positive points. None when no line has them."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for rows, key, style, label, colour in lines:
        xs, ys = _series(rows, key)
        if len(xs) > 1 and all(y > 0 for y in ys):
            ax.plot(xs, ys, style, color=colour, label=label)
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title)
    ax.legend(fontsize=legend_size)
    return _save(plt, fig, png)


def plot_curves(plt, sft_dir: Path, kd_dir: Path, png: Path) -> Path | None:
    """CE of the SFT and Switch-KD students, and Switch-KD's Align and VSD, over training (log scale)."""
    sft, kd = _log(sft_dir), _log(kd_dir)
    lines = [
        (sft, "ce", "-", "SFT: CE", None),
        (kd, "ce", "-", "Switch-KD: CE", None),
        (kd, "align", "--", "Switch-KD: Align", None),
        (kd, "vsd", ":", "Switch-KD: VSD", None),
    ]
    return _log_lines(
        plt, lines, png, ylabel="loss (per token)", title="Student training: SFT vs Switch-KD", legend_size=8
    )


@torch.no_grad()
def _knees(model_dir: Path, dft_file: Path, rows: int = 16) -> torch.Tensor:
    """The knee k of every supervised row of the first ``rows`` DFT samples, under one model."""
    model = VisionLanguageModel.from_pretrained(model_dir).eval()
    ds = LlavaDataset.for_model(dft_file, dft_file.parent, model)
    batch = Collator(model.tokenizer.pad_token_id)([ds[i] for i in range(min(rows, len(ds)))])
    positions, _ = supervised_positions(batch["labels"])
    logits = model(
        batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"], logits_at=positions
    ).logits[:, : model.vocab_size]
    return knee_k(logits.float())


def plot_knee(plt, kd_dir: Path, teacher_dir: Path, *, dft_file: Path, png: Path) -> Path | None:
    """Left: the mean knee k of teacher and student over Switch-KD training; right: the distribution of k
    over answer tokens for the teacher and the final student."""
    rows = _log(kd_dir)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for key, label in (("k_teacher", "teacher"), ("k_student", "student")):
        xs, ys = _series(rows, key)
        if len(xs) > 1:
            left.plot(xs, ys, label=label)
    if not left.lines:
        plt.close(fig)
        return None
    left.set(xlabel="step", ylabel="mean knee k", title="Knee k over training")
    left.legend(fontsize=8)
    teacher, student = _knees(teacher_dir, dft_file), _knees(kd_dir / "final", dft_file)
    top = int(max(teacher.max(), student.max()))
    bins = range(1, top + 2)
    right.hist([teacher.numpy(), student.numpy()], bins=bins, label=["teacher", "student (final)"])
    right.set(xlabel="k", ylabel="answer tokens", title="Knee k per token (end)")
    right.legend(fontsize=8)
    return _save(plt, fig, png)


def plot_kinds(
    plt, per_seed: list[dict], rows: list[tuple[str, str]], *, png: Path, constant: dict[str, float] | None = None
) -> Path | None:
    """Per-kind accuracy bars of ``rows`` ((label, key) into each seed's scores), mean over seeds, with
    the seeds' std as error bars when there are several; ``constant`` (kind: %) marks what the best
    constant answer scores on each kind."""
    rows = [(label, key) for label, key in rows if all(key in s and "per_type" in s[key] for s in per_seed)]
    if not rows:
        return None
    kinds = sorted(per_seed[0][rows[0][1]]["per_type"])
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    width = 0.8 / len(rows)
    for i, (label, key) in enumerate(rows):
        values = [[s[key]["per_type"][k] for s in per_seed] for k in kinds]
        means = [statistics.mean(v) for v in values]
        errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(kinds))]
        ax.bar(xs, means, width, yerr=errs if len(per_seed) > 1 else None, label=label, capsize=2)
    if constant and set(kinds) <= set(constant):
        for j, kind in enumerate(kinds):
            ax.hlines(
                constant[kind],
                j - 0.45,
                j + 0.45,
                colors="black",
                linewidth=1.5,
                label="best constant answer" if j == 0 else None,
            )
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title=f"Held-out accuracy per question kind ({len(per_seed)} seed(s))")
    ax.legend(
        fontsize=8,
        ncol=len(ax.get_legend_handles_labels()[0]),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        frameon=False,
    )
    return _save(plt, fig, png)


def plot_vision(plt, runs: dict[str, Path], png: Path) -> Path | None:
    """The gradient norm each term sends into V^S over training, per run (log scale)."""
    styles = {"ce": ("-", "CE"), "align": ("--", "Align"), "vsd": (":", "VSD")}
    logs = {label: _log(run_dir) for label, run_dir in runs.items()}
    lines = [
        (rows, f"grad_vision_{term}", style, f"{label}: {name}", f"C{i}")  # one colour per run
        for i, (label, rows) in enumerate(logs.items())
        for term, (style, name) in styles.items()
    ]
    return _log_lines(
        plt, lines, png, ylabel="‖gradient into V^S‖", title="What moves the student's encoder", legend_size=7
    )
