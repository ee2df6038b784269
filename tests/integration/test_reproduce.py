"""The ablation driver: the tables read each row against its baseline, and on a tiny budget every row
of Tables 3-6 is produced and the plots are drawn."""

import json

import pytest

from switchkd.demo import DemoConfig, run_reproduce
from switchkd.demo.reproduce import TEACHER_SIZES, tables
from switchkd.losses import LOSSES

KINDS = {"colour": 50.0, "count": 50.0}


def _row(right: int, n: int = 100) -> dict:
    correct = [1] * right + [0] * (n - right)
    return {"accuracy": 100.0 * right / n, "per_type": KINDS, "correct": correct}


def _seed(base: int, switch_gain: int) -> dict:
    rows = {
        "teacher": _row(60),
        "PT+SFT": _row(base),
        "DFT w/o switch": _row(base + 1),
        "DPT-SFT": _row(base),
        "DPT-DFT": _row(base + 2),
        **{f"loss {n}": _row(base + i) for i, n in enumerate(LOSSES)},
        "loss dbild_rkl": _row(base + switch_gain),
        "PT start": {"feature_distance": 0.5},
    }
    for s in TEACHER_SIZES:
        rows[f"teacher {s.name}"] = _row(55)
        rows[f"teacher {s.name} DFT"] = _row(base)
    rows |= {"hetero PT+SFT": _row(base - 5), "hetero DFT w/o switch": _row(base - 4), "hetero Switch-KD": _row(base)}
    rows["PT+SFT"]["feature_distance"] = 0.4
    rows["loss dbild_rkl"] |= {"feature_distance": 0.2, "grad_vision": {"ce": 0.1, "align": 0.2, "vsd": 0.03}}
    return rows


def test_tables_read_each_row_against_its_baseline():
    text = tables([_seed(30, 20), _seed(34, 22)])
    # mean ± std over seeds, and the paired difference with its per-seed values
    assert "| PT+SFT | 32.0 ± 2.8 |" in text
    assert "| DFT with switch (Switch-KD) | 53.0 ± 4.2 |" in text
    assert "+21.0 [" in text and f"(+20.0 / +22.0) | better (p = {2 / 2**42:.2g}) |" in text  # 42 wins, 0 losses
    # one point better than SFT on 100 questions: no evidence
    assert "| DFT without switch | 33.0 ± 2.8 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| DFT without switch"))
    assert line.endswith("| not distinguishable from noise (p = 0.5) |")
    assert (
        text.count("### Table") == 5
        and "| hetero Switch-KD | 32.0 ± 2.8 |" in text
        and "The teachers themselves: small 55.0 ± 0.0, main 60.0 ± 0.0" in text
    )
    assert "| Switch-KD | 0.5±0.0 → 0.2±0.0 | 1.00e-01 | 2.00e-01 | 3.00e-02 |" in text
    assert "| Switch-KD | 50.0 | 50.0 |" in text  # per-kind table


@pytest.mark.slow
def test_quick_reproduce_runs_every_ablation_and_draws_its_plots(tmp_path):
    text = run_reproduce(DemoConfig.quick(str(tmp_path / "r")), seeds=1)
    scores = json.loads((tmp_path / "r" / "scores.json").read_text())[0]
    runs = {"PT+SFT", "DFT w/o switch", "DPT-SFT", "DPT-DFT"} | {f"loss {n}" for n in LOSSES}
    runs |= {f"teacher {s.name} DFT" for s in TEACHER_SIZES} | {f"teacher {s.name}" for s in TEACHER_SIZES}
    runs |= {"hetero PT+SFT", "hetero DFT w/o switch", "hetero Switch-KD"}
    assert set(scores) == runs | {"teacher", "PT start"}
    assert all(len(scores[r]["correct"]) == 42 for r in runs)
    assert "Table 6" in text and "Table 7" in text and "Wall time" in text
    for png in ("curves.png", "knee.png", "kinds.png", "vision.png"):
        assert (tmp_path / "r" / png).stat().st_size > 5000, png
        assert png in text
    assert scores["loss dbild_rkl"]["grad_vision"]["vsd"] > 0


def test_without_matplotlib_no_plot_is_claimed(tmp_path, monkeypatch):
    import switchkd.demo.reproduce as reproduce

    monkeypatch.setattr(reproduce, "pyplot", lambda: None)
    drawn, why = reproduce.draw_plots(tmp_path, [_seed(30, 2)])
    assert drawn == [] and why == "plots not drawn: matplotlib is missing (pip install -e .[plot])"
