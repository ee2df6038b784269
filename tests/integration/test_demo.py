"""A shortened demo end to end: its artefacts exist, the checkpoint loads, the table has all rows,
and the printed chat command answers."""

import json
import subprocess
import sys

import pytest

from switchkd.demo import DemoConfig, run_demo
from switchkd.models import VisionLanguageModel


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    summary = run_demo(DemoConfig.quick(str(tmp_path / "demo")))
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(results) == ["teacher", "student (PT+SFT)", "student (Switch-KD)"]
    for r in results.values():
        w = r["world"]
        assert w["n"] == 14 * 3 and 0 <= w["accuracy"] <= 100
        assert set(w["per_type"]) == {"colour", "shape", "count", "position", "size", "exists", "choice"}
    table = summary["table"].splitlines()
    assert len(table) == 5 and table[2].startswith("| teacher |")
    student = VisionLanguageModel.from_pretrained(summary["student"])
    assert student.num_image_tokens == 9
    log = [json.loads(line) for line in (tmp_path / "demo" / "student_switchkd" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and "vsd" in log[-1] and "align" in log[-1]
    # The printed chat line works, with the question piped on standard input.
    cmd = summary["chat"].split()
    assert cmd[:2] == ["switchkd", "chat"]
    out = subprocess.run(
        [sys.executable, "-m", "switchkd", *cmd[1:], "--max-new-tokens", "4"],
        input="What colour is the circle?\nexit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("user: ") == 2 and "assistant: " in out.stdout
