"""End to end: a tiny model evaluated on a small fixture in each benchmark's file format."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from switchkd.demo import WORLD
from switchkd.evaluation import BENCHMARKS, markdown_table, run_eval
from switchkd.evaluation.run import evaluate_model
from switchkd.models import VisionLanguageModel
from tests import llava_eval_files
from tests.llava_eval_files import flat


def _png(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 32), colour).save(path)


def make_fixture(name: str, d):
    """A benchmark's files in LLaVA's layout (tests/llava_eval_files.py); None for the built-in world."""
    return None if name == "world" else llava_eval_files.write(name, d)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_benchmark_end_to_end_from_pre_written_answers(tiny_world, tmp_path, name, monkeypatch):
    """The whole evaluation path (files, join, answers file, scoring) on answers written beforehand:
    the metrics are the hand-computed ones and no question is asked again."""
    import switchkd.evaluation.run as run_module

    case = make_fixture(name, tmp_path / "data")
    answers = tmp_path / "out" / f"student.{name}.predictions.jsonl"
    answers.parent.mkdir()
    rows = [{"question_id": qid, "text": text} for qid, text in case.predictions.items()]
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    asked = []
    monkeypatch.setattr(run_module, "answer_questions", lambda model, questions, **kw: asked.extend(questions) or {})
    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    metrics, preds = evaluate_model(model, name, tmp_path / "data", answers_file=answers)
    assert asked == [] and preds == case.predictions
    assert flat(metrics) == pytest.approx(flat(case.expected))


@pytest.mark.parametrize("name", sorted([*BENCHMARKS, "world"]))
def test_each_benchmark_is_answered_by_a_model(tiny_world, tmp_path, name):
    """A real (tiny) model answers every question of each layout: prompts and images as the files give them."""
    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    case = make_fixture(name, tmp_path)
    data = tiny_world.paths["test"].parent if name == "world" else tmp_path
    metrics, preds = evaluate_model(model, WORLD if name == "world" else name, data, batch_size=4)
    count = case.questions if case is not None else len(tiny_world.paths["test"].read_text().splitlines())
    assert len(preds) == count and all(isinstance(p, str) for p in preds.values())
    if case is not None:
        assert set(preds) == set(case.predictions)
        assert set(flat(metrics)) == set(flat(case.expected))  # what is reported, whatever the tiny model said


def test_side_by_side_table_and_files(tiny_world, tmp_path):
    make_fixture("pope", tmp_path / "pope")
    out = tmp_path / "out"
    results = run_eval(
        [str(tiny_world.student), str(tiny_world.teacher)],
        ["pope"],
        tmp_path / "pope",
        out_dir=out,
        names=["student", "teacher"],
        progress=False,
    )
    assert set(results) == {"student", "teacher"}
    table = (out / "results.md").read_text()
    assert "| student |" in table and "| teacher |" in table
    assert (out / "student.pope.predictions.jsonl").is_file()
    assert markdown_table(results).count("\n") == 3


def test_missing_files_are_named(tmp_path, tiny_world):
    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    with pytest.raises(FileNotFoundError, match="llava_gqa_testdev_balanced.jsonl"):
        evaluate_model(model, "gqa", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate_model(model, "mmvet", tmp_path)


@pytest.mark.parametrize("name", ["vqav2", "pope", "mmmu"])
def test_benchmark_image_paths_may_not_escape_their_folder(tiny_world, tmp_path, name):
    from switchkd.data.images import ImageError

    data = tmp_path / "bench"
    make_fixture(name, data)
    _png(tmp_path / "private.png")
    for path in data.rglob("*.json*"):
        if path.suffix in (".json", ".jsonl") and '"image"' in path.read_text():
            text = path.read_text()
            for image in ("COCO_val2014_000000000042.jpg", "COCO_val2014_000000310196.jpg", "img/m.png"):
                text = text.replace(f'"{image}"', '"../../private.png"')
            path.write_text(text)
    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    with pytest.raises(ImageError, match="escapes the image root"):
        evaluate_model(model, name, data, batch_size=4)


def _eval_cli(world, out: Path, *extra: str, procs: int = 1, timeout: int = 300, wait: bool = True):
    args = ["eval", "--model", str(world.student), "--benchmark", "world", "--data", str(world.paths["test"].parent)]
    args += ["--out", str(out), *extra]
    if procs == 1:
        cmd = [sys.executable, "-m", "switchkd", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        cmd += ["--master_port", str(_free_port()), "-m", "switchkd", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_takes_device_and_dtype_like_chat_and_predict(tiny_world, tmp_path):
    done = _eval_cli(tiny_world, tmp_path / "bf16", "--device", "cpu", "--torch-dtype", "bf16", "--limit", "6")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| student |" in done.stdout and (tmp_path / "bf16" / "results.json").is_file()
    if torch.cuda.is_available():
        return
    image = tiny_world.paths["test"].parent / json.loads(tiny_world.paths["test"].read_text().splitlines()[0])["image"]
    commands = {
        "eval": _eval_cli(tiny_world, tmp_path / "cuda", "--device", "cuda").stderr,
        "chat": _cli("chat", "--model", tiny_world.student, "--image", image, "--question", "hi", "--device", "cuda"),
        "attention": _cli(
            "attention",
            "--model",
            tiny_world.student,
            "--image",
            image,
            "--question",
            "hi",
            "--out",
            tmp_path / "a.png",
            "--device",
            "cuda",
        ),
        "predict": _cli(
            "predict",
            "--model",
            tiny_world.student,
            "--questions",
            tiny_world.paths["test"],
            "--out",
            tmp_path / "p.jsonl",
            "--device",
            "cuda:0",
        ),
    }
    for name, stderr in commands.items():
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in stderr, (name, stderr[-2000:])
        assert lines[0].startswith(f"switchkd {name}: error: --device cuda") and "CPU-only build" in lines[0]
    assert "not a device name" in _cli(
        "chat", "--model", tiny_world.student, "--image", image, "--question", "hi", "--device", "gpu"
    )


def _cli(*args) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "switchkd", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300).stderr


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tiny_world, tmp_path):
    one = _eval_cli(tiny_world, tmp_path / "one", "--batch-size", "4")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _eval_cli(tiny_world, tmp_path / "two", "--batch-size", "4", procs=2)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("student.world.predictions.jsonl", "results.json"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert not list((tmp_path / "two").glob("*.part-*"))
    assert two.stdout.count("| student |") == 1  # the table is printed once, by the main process


@pytest.mark.slow
def test_a_killed_eval_resumes_to_the_same_results_without_answering_twice(tiny_world, tmp_path, monkeypatch):
    reference = _eval_cli(tiny_world, tmp_path / "full", "--batch-size", "1")
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "killed"
    running = _eval_cli(tiny_world, out, "--batch-size", "1", wait=False)
    part = out / "student.world.predictions.jsonl.part-0"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not part.is_file() or len(part.read_text().splitlines()) < 3):
        time.sleep(0.05)
    running.send_signal(signal.SIGKILL)
    running.wait()
    kept = len(part.read_text().splitlines())
    total = len(tiny_world.paths["test"].read_text().splitlines())
    assert 3 <= kept < total, "the kill should land mid-evaluation"
    with part.open("a") as f:
        f.write('{"question_id": "torn", "te')  # a kill in the middle of a write
    asked = []
    import switchkd.evaluation.run as run_module

    real = run_module.answer_questions

    def counting(model, questions, **kwargs):
        asked.extend(q.id for q in questions)
        return real(model, questions, **kwargs)

    monkeypatch.setattr(run_module, "answer_questions", counting)
    run_eval([str(tiny_world.student)], [WORLD], tiny_world.paths["test"].parent, out_dir=out, batch_size=1)
    assert len(asked) == len(set(asked)) == total - kept  # nothing answered twice, nothing lost
    for name in ("student.world.predictions.jsonl", "results.json"):
        assert (out / name).read_text() == (tmp_path / "full" / name).read_text(), name
    assert not list(out.glob("*.part-*"))


@pytest.mark.slow
def test_a_bad_answers_file_is_one_error_in_every_process_not_a_hang(tiny_world, tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "student.world.predictions.jsonl").write_text('{"question_id": "1", "text": "red"}\n{"text": "no id"}\n')
    started = time.monotonic()
    done = _eval_cli(tiny_world, out, procs=2, timeout=240)
    assert done.returncode != 0 and time.monotonic() - started < 200
    errors = [line for line in done.stderr.splitlines() if line.startswith("switchkd eval: error:")]
    assert len(errors) == 2, done.stderr[-3000:]
    assert all(
        line.endswith("predictions.jsonl:2: not an answer row (JSON with question_id and text)") for line in errors
    )
