"""End to end: a tiny model evaluated on a small fixture in each benchmark's file format."""

import base64
import io
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


def _png(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 32), colour).save(path)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_fixture(name: str, d):
    if name == "vqav2":
        _png(d / "val2014" / "a.jpg")
        _jsonl(
            d / "llava_vqav2_mscoco_val.jsonl",
            [
                {"question_id": 1, "image": "a.jpg", "text": "What colour?"},
                {"question_id": 2, "image": "a.jpg", "text": "How many?"},
            ],
        )
        (d / "v2_mscoco_val2014_annotations.json").write_text(
            json.dumps(
                {
                    "annotations": [
                        {"question_id": 1, "answers": [{"answer": "red"}] * 10},
                        {"question_id": 2, "answers": [{"answer": "2"}] * 5 + [{"answer": "two"}] * 5},
                    ]
                }
            )
        )
        return 2
    if name == "gqa":
        _png(d / "images" / "n1.jpg")
        _jsonl(d / "llava_gqa_testdev_balanced.jsonl", [{"question_id": "q1", "image": "n1.jpg", "text": "Is it red?"}])
        (d / "testdev_balanced_questions.json").write_text(json.dumps({"q1": {"answer": "yes"}}))
        return 1
    if name == "textvqa":
        _png(d / "train_images" / "t.jpg")
        _jsonl(
            d / "llava_textvqa_val_v051_ocr.jsonl", [{"question_id": 7, "image": "t.jpg", "text": "What is written?"}]
        )
        (d / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": [{"question_id": 7, "answers": ["stop"] * 10}]}))
        return 1
    if name == "vizwiz":
        _png(d / "val" / "VizWiz_val_1.jpg")
        _jsonl(d / "llava_test.jsonl", [{"question_id": "v1", "image": "VizWiz_val_1.jpg", "text": "What is this?"}])
        (d / "val.json").write_text(
            json.dumps(
                [
                    {
                        "image": "VizWiz_val_1.jpg",
                        "question": "What is this?",
                        "answers": [{"answer": "unanswerable"}] * 10,
                    }
                ]
            )
        )
        return 1
    if name == "scienceqa":
        _png(d / "images" / "test" / "5" / "image.png")
        (d / "problems.json").write_text(
            json.dumps(
                {
                    "5": {"question": "Which is a mammal?", "choices": ["whale", "shark"], "answer": 0, "hint": ""},
                    "6": {"question": "Text only?", "choices": ["a", "b"], "answer": 1, "hint": ""},
                }
            )
        )
        (d / "llava_test_CQM-A.json").write_text(
            json.dumps([{"id": "5", "image": "5/image.png", "conversations": []}, {"id": "6", "conversations": []}])
        )
        return 1
    if name == "mmmu":
        _png(d / "img" / "m.png")
        _jsonl(
            d / "mmmu_dev.jsonl",
            [
                {
                    "id": "m1",
                    "question": "Which organ?",
                    "options": ["heart", "lung", "liver", "kidney"],
                    "answer": "B",
                    "question_type": "multiple-choice",
                    "image": "img/m.png",
                },
                {"id": "m2", "question": "What is 2+2?", "answer": "4", "question_type": "open", "image": "img/m.png"},
            ],
        )
        return 2
    if name in ("mmbench", "mmbench_cn"):
        buf = io.BytesIO()
        Image.new("RGB", (30, 30), (0, 0, 255)).save(buf, format="PNG")
        b64 = base64.b64encode(buf.getvalue()).decode()
        fname = "mmbench_dev_cn_20231003.tsv" if name == "mmbench_cn" else "mmbench_dev_20230712.tsv"
        header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
        rows = [f"{i}\tWhat colour?\tnan\tred\tblue\tgreen\tyellow\tB\tcolour\t{b64}\n" for i in range(2)]
        (d / fname).write_text(header + "".join(rows))
        return 2 * 4  # every rotation is asked
    if name == "mme":
        root = d / "MME_Benchmark_release_version" / "color"
        _png(root / "000.png")
        _jsonl(
            d / "llava_mme.jsonl",
            [
                {
                    "question_id": "color/000.png-0",
                    "image": "color/000.png",
                    "text": "Is it red? Please answer yes or no.",
                    "category": "color",
                },
                {
                    "question_id": "color/000.png-1",
                    "image": "color/000.png",
                    "text": "Is it blue? Please answer yes or no.",
                    "category": "color",
                },
            ],
        )
        gt = d / "eval_tool" / "Your_Results"
        gt.mkdir(parents=True)
        (gt / "color.txt").write_text(
            "000.png\tIs it red? Please answer yes or no.\tYes\n000.png\tIs it blue? Please answer yes or no.\tNo\n"
        )
        return 2
    if name == "pope":
        _png(d / "val2014" / "COCO_1.jpg")
        for split in ("adversarial", "random"):
            _jsonl(
                d / "coco" / f"coco_pope_{split}.json",
                [
                    {"question_id": 1, "image": "COCO_1.jpg", "text": "Is there a dog in the image?", "label": "yes"},
                    {"question_id": 2, "image": "COCO_1.jpg", "text": "Is there a cat in the image?", "label": "no"},
                ],
            )
        return 4
    if name == "world":
        return None
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted([*BENCHMARKS, "world"]))
def test_each_benchmark_end_to_end(tiny_world, tmp_path, name):
    model = VisionLanguageModel.from_pretrained(tiny_world.student)
    expected = make_fixture(name, tmp_path)
    data = tiny_world.paths["test"].parent if name == "world" else tmp_path
    metrics, preds = evaluate_model(model, WORLD if name == "world" else name, data, batch_size=4)
    count = expected if expected is not None else len(tiny_world.paths["test"].read_text().splitlines())
    assert len(preds) == count
    assert all(isinstance(p, str) for p in preds.values())
    if name == "mme":
        assert "perception" in metrics and "color" in metrics["subtasks"]
    elif name == "pope":
        assert {"adversarial", "random", "f1"} <= set(metrics)
    else:
        assert 0 <= metrics["accuracy"] <= 100


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
            for image in ("a.jpg", "COCO_1.jpg", "img/m.png"):
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
