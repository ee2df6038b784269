"""The ablation driver on a tiny budget: every row of Tables 3-5 is produced, and the plots are drawn."""

import json

import pytest

from switchkd.demo import DemoConfig, run_reproduce
from switchkd.demo.reproduce import tables
from switchkd.losses import LOSSES


def test_tables_format_mean_and_std():
    seeds = [
        {
            "teacher": 50.0,
            "PT+SFT": 30.0,
            "DFT w/o switch": 31.0,
            "DPT-SFT": 29.0,
            "DPT-DFT": 32.0,
            **{f"loss {n}": 30.0 + i for i, n in enumerate(LOSSES)},
        },
        {
            "teacher": 52.0,
            "PT+SFT": 34.0,
            "DFT w/o switch": 33.0,
            "DPT-SFT": 31.0,
            "DPT-DFT": 30.0,
            **{f"loss {n}": 32.0 + i for i, n in enumerate(LOSSES)},
        },
    ]
    text = tables(seeds)
    assert "| PT+SFT | 32.0 ± 2.8 |" in text
    assert "| DBILD-RKL | 36.0 ± 1.4 |" in text and "teacher: 51.0 ± 1.4" in text
    assert text.count("### Table") == 3


@pytest.mark.slow
def test_quick_reproduce_runs_every_ablation(tmp_path):
    text = run_reproduce(DemoConfig.quick(str(tmp_path / "r")), seeds=1)
    scores = json.loads((tmp_path / "r" / "scores.json").read_text())[0]
    assert set(scores) == {"teacher", "PT+SFT", "DFT w/o switch", "DPT-SFT", "DPT-DFT"} | {f"loss {n}" for n in LOSSES}
    assert "Table 5" in text
