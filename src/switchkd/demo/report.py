"""The ablations' report: the tables and plots of ``switchkd reproduce`` from its ``scores.json`` and the
seeds' test questions (``switchkd reproduce --report`` redraws them without training), and the names of
the rows that the runs (``reproduce.py``) write.

The tables score the question kinds the teacher has learned: those it answers better than the best
constant answer (the most common answer of that kind in the test set), by an exact one-sided binomial
test pooled over seeds at p < 0.01. A kind the teacher cannot answer gives the student nothing to learn
from it and only adds noise to every comparison; the accuracy over all kinds stays in its own column.
Every row is reported as mean ± std over seeds, and against its baseline (PT+SFT; the switch row also
against DFT without it) as the paired difference per seed with a bootstrap 95 % interval over questions
(``evaluation.stats``) and a verdict in words. "What moves V^S" reads the logged gradient norm that each
term sends into the student's vision tower, and the encoders' feature distance.

Plots (with the ``plot`` extra, matplotlib): training curves of the SFT and Switch-KD students, the knee
k of teacher and student over training, per-kind accuracy bars, and the vision-tower diagnostics.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from switchkd.demo.benchmark import load_world
from switchkd.demo.plots import plot_curves, plot_kinds, plot_knee, plot_vision, pyplot
from switchkd.evaluation.stats import Difference, above_chance, accuracy_interval, paired_difference
from switchkd.losses import LOSSES

SWITCH_KD = "loss dbild_rkl"
"""The Switch-KD row (DFT with the switch, DBiLD-RKL) shared by Tables 3, 4 and 5."""


DIAGNOSED = ("PT+SFT", "DFT w/o switch", SWITCH_KD)
"""Runs that log the vision-tower diagnostics (one extra forward/backward per term every 40 steps)."""


@dataclass(frozen=True)
class TeacherSize:
    name: str
    width: int
    layers: int


TEACHER_SIZES = (TeacherSize("small", 96, 2), TeacherSize("large", 192, 6))
"""Table 6's other teachers; the main one is ``DemoConfig.teacher_width`` x ``teacher_layers`` (128 x 4)."""


def run_folder(name: str) -> str:
    """A row's run folder under its seed's folder."""
    return name.replace(" ", "_").replace("/", "").replace("+", "_")


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _interval(per_seed: list[dict], key: str) -> str:
    """The 95 % bootstrap interval of the mean accuracy over seeds (questions resampled in each)."""
    low, high = accuracy_interval([s[key]["correct"] for s in per_seed])
    return f"[{low:.1f}, {high:.1f}]"


def compare(per_seed: list[dict], row: str, baseline: str) -> Difference:
    return paired_difference([(s[row]["correct"], s[baseline]["correct"]) for s in per_seed])


TABLES = (
    (
        "Table 3: the visual switch",
        [
            ("PT+SFT", "PT+SFT", None),
            ("DFT without switch", "DFT w/o switch", "PT+SFT"),
            ("DFT with switch (Switch-KD)", SWITCH_KD, "PT+SFT"),
            ("DFT with switch vs without", SWITCH_KD, "DFT w/o switch"),
        ],
    ),
    (
        "Table 4: the distillation loss (DFT with switch)",
        [(n.upper().replace("_", "-"), f"loss {n}", "PT+SFT") for n in LOSSES],
    ),
    (
        "Table 5: training schemes",
        [
            ("PT-SFT", "PT+SFT", None),
            ("DPT-SFT", "DPT-SFT", "PT+SFT"),
            ("PT-DFT", SWITCH_KD, "PT+SFT"),
            ("DPT-DFT", "DPT-DFT", "PT+SFT"),
        ],
    ),
    (
        "Table 6: the teacher's size (Switch-KD, same student)",
        [(f"teacher {s.width}x{s.layers} ({s.name})", f"teacher {s.name} DFT", "PT+SFT") for s in TEACHER_SIZES[:1]]
        + [("teacher 128x4 (main)", SWITCH_KD, "PT+SFT")]
        + [(f"teacher {s.width}x{s.layers} ({s.name})", f"teacher {s.name} DFT", "PT+SFT") for s in TEACHER_SIZES[1:]],
    ),
    (
        "Table 7 (beyond the paper): a student with another vision tower, through the switch adapter",
        [
            ("hetero PT+SFT", "hetero PT+SFT", None),
            ("hetero DFT without switch", "hetero DFT w/o switch", "hetero PT+SFT"),
            ("hetero Switch-KD", "hetero Switch-KD", "hetero PT+SFT"),
            ("hetero Switch-KD vs without switch", "hetero Switch-KD", "hetero DFT w/o switch"),
        ],
    ),
)


LEARNED_P = 0.01
"""A question kind counts as learned when the teacher beats its best constant answer at this p-value."""


@dataclass(frozen=True)
class KindCheck:
    kind: str
    teacher: float
    """The teacher's accuracy on the kind (%, pooled over seeds)."""
    constant: float
    """The best constant answer's accuracy (%, pooled over seeds): the most common answer of the kind."""
    p: float
    """One-sided exact binomial p-value of the teacher's hits against the constant answer's rate."""

    @property
    def learned(self) -> bool:
        return self.p < LEARNED_P


def questions(test_dir: Path) -> list[tuple[str, str]]:
    """(kind, answer) of every test question, in the order of the scores' 0/1 vectors."""
    return [(item.meta["type"], item.meta["answer"]) for item in load_world(test_dir)]


def check_kinds(per_seed: list[dict], asked: list[list[tuple[str, str]]]) -> list[KindCheck]:
    """Per question kind: whether the main teacher answers it better than a constant answer could."""
    hits: Counter = Counter()
    constant: Counter = Counter()
    total: Counter = Counter()
    for scores, seed_questions in zip(per_seed, asked, strict=True):
        correct = scores["teacher"]["correct"]
        if len(correct) != len(seed_questions):
            raise ValueError(f"{len(correct)} teacher answers for {len(seed_questions)} test questions")
        answers: dict[str, Counter] = {}
        for (kind, answer), right in zip(seed_questions, correct, strict=True):
            hits[kind] += right
            total[kind] += 1
            answers.setdefault(kind, Counter())[answer] += 1
        for kind, counts in answers.items():
            constant[kind] += counts.most_common(1)[0][1]
    return [
        KindCheck(
            kind,
            100.0 * hits[kind] / total[kind],
            100.0 * constant[kind] / total[kind],
            above_chance(hits[kind], total[kind], constant[kind] / total[kind]),
        )
        for kind in sorted(total)
    ]


def restrict(per_seed: list[dict], asked: list[list[tuple[str, str]]], kinds: set[str]) -> list[dict]:
    """The scores on the questions of ``kinds`` only (accuracy and 0/1 vectors; the rest as they are)."""
    out = []
    for scores, seed_questions in zip(per_seed, asked, strict=True):
        keep = [kind in kinds for kind, _ in seed_questions]
        seed = {}
        for run, row in scores.items():
            if "correct" in row:
                correct = [c for c, k in zip(row["correct"], keep, strict=True) if k]
                row = {**row, "correct": correct, "accuracy": 100.0 * sum(correct) / len(correct)}
            seed[run] = row
        out.append(seed)
    return out


def tables(per_seed: list[dict], asked: list[list[tuple[str, str]]] | None = None) -> str:
    """The tables as markdown: accuracy mean ± std over seeds with its 95 % interval, and each row
    against its baseline (paired difference, interval, per-seed values, verdict). With ``asked`` (each
    seed's test questions as (kind, answer)) they score only the kinds the teacher has learned."""
    n = len(per_seed)
    present = set.intersection(*(set(s) for s in per_seed))
    checks = check_kinds(per_seed, asked) if asked is not None else []
    learned = {c.kind for c in checks if c.learned}
    scored = restrict(per_seed, asked, learned) if learned else per_seed
    teacher = [s["teacher"]["accuracy"] for s in scored]
    count = len(scored[0]["teacher"]["correct"])
    if learned:
        dropped = sorted({c.kind for c in checks} - learned)
        what = (
            f"the question kinds the teacher has learned ({', '.join(sorted(learned))}: {count} questions per "
            f"seed); the kinds it answers no better than a constant answer ({', '.join(dropped) or 'none'}) are "
            "left out of every score but the last column's, see the per-kind table"
        )
    else:
        what = f"all {count} questions per seed" + (" (the teacher has learned no kind)" if checks else "")
    out = [
        f"Held-out accuracy (%) on the built-in world, {n} seed(s), on {what}; the main teacher: "
        f"{_mean_std(teacher)}. Differences are paired (same questions), in points: mean [95 % bootstrap "
        "interval over questions] (per seed); a row reads as better or worse only when the interval excludes 0, "
        "every seed agrees in sign and the exact sign test on the questions the two runs answer differently "
        "gives p < 0.05.\n"
    ]
    for title, rows in TABLES:
        rows = [r for r in rows if r[1] in present and (r[2] is None or r[2] in present)]
        if not rows:
            continue
        out += [
            f"### {title}\n",
            "| run | accuracy | 95 % interval | vs | difference | reading | all kinds |",
            "| --- | ---: | ---: | --- | ---: | --- | ---: |",
        ]
        for label, key, base in rows:
            cells = [label, _mean_std([s[key]["accuracy"] for s in scored]), _interval(scored, key)]
            if base is None:
                cells += ["", "", ""]
            else:
                diff = compare(scored, key, base)
                cells += [base, diff.cell(), diff.reading()]
            cells.append(_mean_std([s[key]["accuracy"] for s in per_seed]))
            out.append("| " + " | ".join(cells) + " |")
        if title.startswith("Table 6"):
            sizes = [("teacher small", "small"), ("teacher", "main"), ("teacher large", "large")]
            accs = ", ".join(
                f"{label} {_mean_std([s[k]['accuracy'] for s in scored])}" for k, label in sizes if k in present
            )
            out.append(f"\nThe teachers themselves: {accs}.")
        out.append("")
    out.append(kinds_table(per_seed, checks))
    out.append(vision_table(per_seed))
    return "\n".join(out)


KIND_ROWS = (
    ("teacher", "teacher"),
    ("PT+SFT", "PT+SFT"),
    ("DFT w/o switch", "DFT w/o switch"),
    ("Switch-KD", SWITCH_KD),
)


def kinds_table(per_seed: list[dict], checks: list[KindCheck] = ()) -> str:
    rows = [(label, key) for label, key in KIND_ROWS if all(key in s for s in per_seed)]
    kinds = sorted(per_seed[0][rows[0][1]]["per_type"]) if rows else []
    out = [
        "### Per question kind (accuracy %, mean over seeds)\n",
        "| model | " + " | ".join(kinds) + " |",
        "| --- |" + " ---: |" * len(kinds),
    ]
    for label, key in rows:
        means = [statistics.mean(s[key]["per_type"][k] for s in per_seed) for k in kinds]
        out.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    by_kind = {c.kind: c for c in checks}
    if by_kind and set(kinds) <= set(by_kind):
        out.append("| best constant answer | " + " | ".join(f"{by_kind[k].constant:.1f}" for k in kinds) + " |")
        out.append(
            "| teacher above it (p) | "
            + " | ".join(f"{'yes' if by_kind[k].learned else 'no'} ({by_kind[k].p:.2g})" for k in kinds)
            + " |"
        )
    return "\n".join(out) + "\n"


def diagnostic_means(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    out = {}
    for key in ("grad_vision_ce", "grad_vision_align", "grad_vision_vsd"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = statistics.mean(values)
    return out


def vision_table(per_seed: list[dict], seed_dirs: list[Path] | None = None) -> str:
    """What moves V^S: feature distance to the teacher's encoder at the start and the end, and (with the
    run folders) the mean gradient norm each term sends into the vision tower."""
    out = [
        "### What moves the student's encoder V^S\n",
        "| run | feature distance to V^T (PT start → end) | mean ‖∇ V^S‖ from CE | from Align | from VSD |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key in KIND_ROWS[1:]:
        if not all("feature_distance" in s.get(key, {}) for s in per_seed):
            continue
        start = _mean_std([s["PT start"]["feature_distance"] for s in per_seed]).replace(" ± ", "±")
        end = _mean_std([s[key]["feature_distance"] for s in per_seed]).replace(" ± ", "±")
        grads = {}
        for s in per_seed:
            for term, value in s[key].get("grad_vision", {}).items():
                grads.setdefault(term, []).append(value)
        cells = [f"{statistics.mean(grads[t]):.2e}" if t in grads else "–" for t in ("ce", "align", "vsd")]
        out.append(f"| {label} | {start} → {end} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def draw_plots(out: Path, per_seed: list[dict], checks: list[KindCheck] = ()) -> tuple[list[Path], str | None]:
    """The plots from seed 0's runs; returns the files drawn, and why none were when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return [], "plots not drawn: matplotlib is missing (pip install -e .[plot])"
    seed0 = out / "seed0"
    kd, sft = seed0 / run_folder(SWITCH_KD), seed0 / run_folder("PT+SFT")
    drawn = [
        plot_curves(plt, sft, kd, out / "curves.png"),
        plot_knee(
            plt, kd, seed0 / "teacher" / "final", dft_file=seed0 / "world" / "dft_train.json", png=out / "knee.png"
        ),
        plot_kinds(
            plt, per_seed, list(KIND_ROWS), png=out / "kinds.png", constant={c.kind: c.constant for c in checks}
        ),
        plot_vision(
            plt,
            {"SFT": sft, "DFT w/o switch": seed0 / run_folder("DFT w/o switch"), "Switch-KD": kd},
            out / "vision.png",
        ),
    ]
    return [p for p in drawn if p is not None], None


def report(out: str | Path, wall: str = "") -> str:
    """The tables (written to ``tables.md``) and the plots from ``<out>/scores.json`` and the seeds'
    test questions, without training anything (``switchkd reproduce --report``)."""
    out = Path(out)
    scores = out / "scores.json"
    if not scores.is_file():
        raise FileNotFoundError(f"{scores} not found: run switchkd reproduce --out {out} first")
    per_seed = json.loads(scores.read_text())
    asked = [questions(out / f"seed{i}" / "world") for i in range(len(per_seed))]
    text = tables(per_seed, asked) + (f"\n{wall}\n" if wall else "")
    (out / "tables.md").write_text(text)
    drawn, why = draw_plots(out, per_seed, check_kinds(per_seed, asked))
    text += "\n" + (f"plots: {', '.join(str(p) for p in drawn)}" if drawn else why or "no plot had data to draw")
    return text + "\n"
