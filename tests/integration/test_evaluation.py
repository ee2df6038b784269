"""End to end: a tiny model evaluated on a small fixture in each benchmark's file format."""

import base64
import io
import json

import pytest
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
