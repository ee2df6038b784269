"""The ablation driver: the tables read each row against its baseline, and on a tiny budget every row
of Tables 3-6 is produced and the plots are drawn."""

import json

import pytest

from switchkd.demo import DemoConfig, run_reproduce
from switchkd.demo.report import TEACHER_SIZES, tables
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
    assert line.endswith("| not distinguishable from noise (p = 0.5) | 33.0 ± 2.8 |")
    assert (
        text.count("### Table") == 5
        and "| hetero Switch-KD | 32.0 ± 2.8 |" in text
        and "The teachers themselves: small 55.0 ± 0.0, main 60.0 ± 0.0" in text
    )
    assert "| Switch-KD | 0.5±0.0 → 0.2±0.0 | 1.00e-01 | 2.00e-01 | 3.00e-02 |" in text
    assert "| Switch-KD | 50.0 | 50.0 |" in text  # per-kind table


def _kinds_seed() -> tuple[dict, list[tuple[str, str]]]:
    """10 colour questions (6 red, 4 blue), then 10 size questions (5 small, 5 large)."""
    asked = [("colour", "red")] * 6 + [("colour", "blue")] * 4 + [("size", "small")] * 5 + [("size", "large")] * 5

    def row(correct):
        per = {"colour": 10.0 * sum(correct[:10]), "size": 10.0 * sum(correct[10:])}
        return {"accuracy": 5.0 * sum(correct), "per_type": per, "correct": correct}

    teacher = [1] * 10 + [1, 0] * 5  # every colour, half the sizes: no better than "small" every time
    sft = [1] * 5 + [0] * 5 + [1] * 10  # half the colours; every size, by luck
    kd = [1] * 9 + [0] + [0] * 10
    seed = {"teacher": row(teacher), "PT+SFT": row(sft), "DFT w/o switch": row(sft), "loss dbild_rkl": row(kd)}
    return seed, asked


def test_tables_score_only_the_kinds_the_teacher_has_learned():
    seed, asked = _kinds_seed()
    text = tables([seed, seed], [asked, asked])
    # colour: the teacher's 20 of 20 against a constant "red" right 60 % of the time: p = 0.6^20;
    # size: 10 of 20 against 50 %: P(X >= 10) = 1/2 + C(20,10) / 2^21 = 0.588
    assert "| best constant answer | 60.0 | 50.0 |" in text
    assert "| teacher above it (p) | yes (3.7e-05) | no (0.59) |" in text
    assert "learned (colour: 10 questions per seed)" in text and "constant answer (size) are left out" in text
    # on colour alone Switch-KD is 90 % against SFT's 50 %: 4 wins, 0 losses per seed, p = 2 / 2^8;
    # over all kinds it would read 45 % against 75 %
    line = next(x for x in text.splitlines() if x.startswith("| DFT with switch (Switch-KD)"))
    assert line.startswith("| DFT with switch (Switch-KD) | 90.0 ± 0.0 |")
    assert line.endswith(f"(+40.0 / +40.0) | better (p = {2 / 2**8:.2g}) | 45.0 ± 0.0 |")
    assert "the main teacher: 100.0 ± 0.0" in text


def test_a_teacher_that_learned_nothing_leaves_every_kind_scored():
    seed, asked = _kinds_seed()
    seed["teacher"]["correct"] = [0] * 20
    text = tables([seed], [asked])
    assert "on all 20 questions per seed (the teacher has learned no kind)" in text
    assert "| DFT with switch (Switch-KD) | 45.0 |" in text


def test_report_rebuilds_the_tables_from_the_scores_without_training(tmp_path):
    from switchkd.demo.report import report

    with pytest.raises(FileNotFoundError, match="scores.json not found"):
        report(tmp_path)
    seed, asked = _kinds_seed()
    world = tmp_path / "seed0" / "world"
    world.mkdir(parents=True)
    rows = [
        {"question_id": str(i), "image": "x.png", "text": "q", "answer": a, "type": k} for i, (k, a) in enumerate(asked)
    ]
    (world / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "scores.json").write_text(json.dumps([seed]))
    text = report(tmp_path)
    assert "| DFT with switch (Switch-KD) | 90.0 |" in text
    assert (tmp_path / "tables.md").read_text() in text


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
    import switchkd.demo.report as report

    monkeypatch.setattr(report, "pyplot", lambda: None)
    drawn, why = report.draw_plots(tmp_path, [_seed(30, 2)])
    assert drawn == [] and why == "plots not drawn: matplotlib is missing (pip install -e .[plot])"
