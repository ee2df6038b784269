"""A shortened demo end to end: its artefacts exist, the checkpoint loads, the table has all rows,
and the printed chat command answers."""

import json
import subprocess
import sys

import pytest

from switchkd.demo import DemoConfig, run_demo
from switchkd.demo.world import TAUGHT
from switchkd.models import VisionLanguageModel


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    summary = run_demo(DemoConfig.quick(str(tmp_path / "demo")))
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(results) == ["teacher", "student (PT+SFT)", "student (Switch-KD)"]
    for r in results.values():
        w = r["world"]
        assert w["n"] == 14 * 3 and 0 <= w["accuracy"] <= 100
        assert set(w["per_type"]) == set(TAUGHT)
    table = summary["table"].splitlines()
    assert table[0].startswith("| model | all | 95 % interval |") and table[2].startswith("| teacher |")
    assert table[-1].startswith("Switch-KD - SFT: ") and "paired bootstrap over the 42 questions" in table[-1]
    for r in results.values():
        low, high = r["world"]["interval"]
        assert low <= r["world"]["accuracy"] <= high
    if summary["plot"] is not None:  # matplotlib installed
        assert (tmp_path / "demo" / "kinds.png").stat().st_size > 5000
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


@pytest.mark.slow
def test_the_demo_repeats_bit_for_bit_with_the_same_threads(tmp_path):
    """What the README promises: one seed, code and thread count give the same logs and table (a
    different thread count rounds matmuls differently, so it is not promised)."""
    import torch

    threads = torch.get_num_threads()
    runs = [run_demo(DemoConfig.quick(str(tmp_path / name))) for name in ("a", "b")]
    assert torch.get_num_threads() == threads
    assert runs[0]["table"] == runs[1]["table"]
    for stage in ("teacher", "student_sft", "student_switchkd"):
        logs = [(tmp_path / n / stage / "log.jsonl").read_text().splitlines() for n in ("a", "b")]
        losses = [[json.loads(line)["loss"] for line in log] for log in logs]
        assert losses[0] == losses[1], stage


def test_resume_keeps_a_finished_stage_only_when_its_config_is_unchanged(tiny_world, tmp_path):
    from switchkd.config import ModelConfig
    from switchkd.demo.stages import run_stage

    cfg = DemoConfig.quick(str(tmp_path / "r"))
    cfg.reuse = True
    model = ModelConfig(pretrained=str(tiny_world.student))

    def stage(lr=1e-3):
        return run_stage(cfg, "s", model=model, data=tiny_world.paths["dft"], stage="sft", steps=2, lr=lr)

    first = stage()
    assert len(first.history) == 2
    stamp = tmp_path / "r" / "s" / "demo_stage.json"
    # a stamp written before an option existed (here: train.lora) still matches at that option's default
    saved = json.loads(stamp.read_text())
    del saved["train"]["lora"]
    stamp.write_text(json.dumps(saved))
    kept = stage()
    assert kept.history == [] and kept.final_model == first.final_model
    cfg.progress = not cfg.progress  # the console only: a Python sweep resumed from the CLI keeps its runs
    assert stage().history == []
    cfg.progress = not cfg.progress
    retrained = stage(lr=2e-3)
    assert len(retrained.history) == 2
    cfg.reuse = False
    assert len(stage(lr=2e-3).history) == 2  # without --resume every stage starts over
    stamp.unlink()
    cfg.reuse = True
    assert len(stage(lr=2e-3).history) == 2  # no stamp (a killed stage): trained again
