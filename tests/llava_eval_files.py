"""Benchmark files in the layouts of LLaVA-1.5's ``playground/data/eval/<benchmark>`` (a few rows each,
with the traps real files hold), pre-written predictions, and the metrics those predictions earn,
worked out by hand in the comments from the official scripts' rules.

``write(name, folder) -> Case``: the files under ``folder``; ``Case.predictions`` is keyed by the ids
the loader must give (the join is part of what is checked); ``Case.expected`` holds the metrics.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SHORT = "Answer the question using a single word or phrase."


@dataclass
class Case:
    predictions: dict[str, str]
    expected: dict
    questions: int  # how many questions the loader must produce


def _png(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 32), colour).save(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def vqav2(d: Path) -> Case:
    # LLaVA ships test-dev questions (scored by the server: no local answers); a val file sits beside
    # them. The test-dev file sorts first and joins nothing: the val file must be the one read.
    _png(d / "val2014" / "COCO_val2014_000000000042.jpg")
    _jsonl(
        d / "llava_vqav2_mscoco_test-dev2015.jsonl",
        [{"question_id": 42000, "image": "COCO_test2015_000000000001.jpg", "text": f"What is it?\n{SHORT}"}],
    )
    questions = [(1001, "What color is the bus?"), (1002, "How many dogs?"), (1003, "Is it sunny?")]
    questions += [(1004, "Which side?"), (1005, "No annotation for this one?")]
    _jsonl(
        d / "llava_vqav2_mscoco_val2014.jsonl",
        [{"question_id": q, "image": "COCO_val2014_000000000042.jpg", "text": f"{t}\n{SHORT}"} for q, t in questions],
    )
    answers = {1001: ["red"] * 10, 1002: ["2"] * 5 + ["two"] * 5, 1003: ["yes"] * 3 + ["no"] * 7, 1004: ["left"] * 10}
    _json(
        d / "v2_mscoco_val2014_annotations.json",
        {"annotations": [{"question_id": q, "answers": [{"answer": a} for a in ans]} for q, ans in answers.items()]},
    )
    # Red -> 1; 3 against 2/two -> 0; yes with 3 of 10 humans -> 0.9; right against left -> 0. 1005 skipped.
    preds = {"1001": "Red", "1002": "3", "1003": "yes", "1004": "right"}
    return Case(preds, {"accuracy": 100 * 1.9 / 4, "n": 4}, 4)


def gqa(d: Path) -> Case:
    _png(d / "images" / "n161313.jpg")
    ids = ["20240871", "20240872", "20240873"]
    _jsonl(
        d / "llava_gqa_testdev_balanced.jsonl",
        [{"question_id": q, "image": "n161313.jpg", "text": f"Question {q}?\n{SHORT}"} for q in ids],
    )
    _json(d / "testdev_balanced_questions.json", {q: {"answer": a} for q, a in zip(ids, ["yes", "table", "table"])})
    # "Yes." -> yes (right); "the table" is not "table" (wrong); "Table" -> table (right)
    preds = dict(zip(ids, ["Yes.", "the table", "Table"]))
    return Case(preds, {"accuracy": 100 * 2 / 3, "n": 3}, 3)


def textvqa(d: Path) -> Case:
    # LLaVA's file: question_id is the TextVQA *image* id, repeated for an image's two questions; the
    # prompt carries the OCR tokens on its second line. eval_textvqa.py joins on (image id, question).
    _png(d / "train_images" / "003a8ae2ef43b901.jpg")
    _png(d / "train_images" / "0054c91397f2fe05.jpg")
    rows = [
        ("003a8ae2ef43b901", "what is the brand of this phone?", "nokia, 3310"),
        ("003a8ae2ef43b901", "what number is shown?", "nokia, 3310"),
        ("0054c91397f2fe05", "what does the sign say?", "stop"),
        ("0054c91397f2fe05", "a question the annotations do not have?", "stop"),
    ]
    _jsonl(
        d / "llava_textvqa_val_v051_ocr.jsonl",
        [
            {"question_id": i, "image": f"{i}.jpg", "text": f"{q}\nReference OCR token: {ocr}\n{SHORT}"}
            for i, q, ocr in rows
        ],
    )
    data = [
        {"question_id": 34602, "image_id": "003a8ae2ef43b901", "question": "what is the brand of this phone?"},
        {"question_id": 34603, "image_id": "003a8ae2ef43b901", "question": "What number is shown?"},
        {"question_id": 34604, "image_id": "0054c91397f2fe05", "question": "what does the sign say?"},
    ]
    answers = [["nokia"] * 10, ["3310"] * 3 + ["3315"] * 7, ["stop"] * 10]
    _json(d / "TextVQA_0.5.1_val.json", {"data": [{**r, "answers": a} for r, a in zip(data, answers)]})
    # Nokia -> 1; 3310 with 3 of 10 humans -> 0.9; go against stop -> 0. The fourth row joins nothing.
    preds = {"34602": "Nokia", "34603": "3310", "34604": "go"}
    return Case(preds, {"accuracy": 100 * 1.9 / 3, "n": 3}, 3)


def vizwiz(d: Path) -> Case:
    # LLaVA's llava_test.jsonl is the test split (no public answers); a val question file beside it.
    _png(d / "val" / "VizWiz_val_00000000.jpg")
    _png(d / "val" / "VizWiz_val_00000001.jpg")
    _jsonl(d / "llava_test.jsonl", [{"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": "What is this?"}])
    _jsonl(
        d / "llava_vizwiz_val.jsonl",
        [
            {"question_id": "v0", "image": "VizWiz_val_00000000.jpg", "text": "What is this?"},
            {"question_id": "v1", "image": "VizWiz_val_00000001.jpg", "text": "What drink is this?"},
        ],
    )
    _json(
        d / "val.json",
        [
            {"image": "VizWiz_val_00000000.jpg", "answers": [{"answer": "unanswerable"}] * 10},
            {"image": "VizWiz_val_00000001.jpg", "answers": [{"answer": "coffee"}] * 2 + [{"answer": "tea"}] * 8},
        ],
    )
    # Unanswerable -> 1; coffee with 2 of 10 humans -> 0.6
    return Case({"v0": "Unanswerable", "v1": "coffee"}, {"accuracy": 80.0, "n": 2}, 2)


def scienceqa(d: Path) -> Case:
    _png(d / "images" / "test" / "5" / "image.png")
    _png(d / "images" / "test" / "7" / "image.png")
    _json(
        d / "problems.json",
        {
            "5": {"question": "Which is a mammal?", "choices": ["whale", "shark"], "answer": 0, "hint": ""},
            "6": {"question": "Text only?", "choices": ["a", "b"], "answer": 1, "hint": ""},
            "7": {"question": "Which is hottest?", "choices": ["ice", "water", "steam"], "answer": 2, "hint": "Look."},
        },
    )
    _json(
        d / "llava_test_CQM-A.json",
        [{"id": "5", "image": "5/image.png"}, {"id": "6"}, {"id": "7", "image": "7/image.png"}],
    )
    # 5: A is right; 6 has no image (not in ScienceQA-IMG); 7: B against C is wrong
    return Case({"5": "A", "7": "B"}, {"accuracy": 50.0, "n": 2}, 2)


def mmmu(d: Path) -> Case:
    _png(d / "img" / "m.png")
    mc = {"question_type": "multiple-choice", "image": "img/m.png"}
    rows = [
        {"id": "m1", "question": "Which organ?", "options": ["heart", "lung", "liver", "kidney"], "answer": "B", **mc},
        {"id": "m2", "question": "What force?", "answer": "5", "question_type": "open"},
        {"id": "m3", "question": "Which variable?", "answer": "x", "question_type": "open"},
        {"id": "m4", "question": "How many?", "answer": "12", "question_type": "open"},
        {"id": "m5", "question": "What total?", "answer": "1200", "question_type": "open"},
        {"id": "m6", "question": "Which pumps?", "options": "['heart', 'lung']", "answer": "A", **mc},  # MMMU's form
    ]
    _jsonl(d / "mmmu_validation.jsonl", rows)
    preds = {
        "m1": "B",  # right
        "m2": "The force is 5 N. So the total is 10.",  # MMMU lower-cases first: one sentence, key "10": wrong
        "m3": "x = 5",  # key "5" (after "="); the gold "x" is padded: wrong
        "m4": "Roughly 12,5",  # MMMU's number patterns find 5, not 12: wrong
        "m5": "So the total is 1,200 dollars.",  # 1,200 -> 1200: right
        "m6": "heart",  # the option's text: A, right
    }
    return Case(preds, {"accuracy": 50.0, "n": 6}, 6)


def _b64_png(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rotated(options: list[str], answer: str, k: int) -> tuple[list[str], str]:
    shifted = options[k:] + options[:k]
    return shifted, "ABCD"[shifted.index(options["ABCD".index(answer)])]


def mmbench(d: Path, cn: bool = False) -> Case:
    # The distributed dev TSV already holds each question's circular copies: rows index + k * 1e6 with
    # the options rotated by k. Three questions, nine rows.
    questions = [
        (0, "What colour is it?", "nan", ["red", "blue", "green", "yellow"], "B"),
        (1, "Is it a square?", "nan", ["yes", "no"], "A"),
        (2, "What animal?", "Look closely.", ["cat", "dog", "bird"], "C"),
    ]
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "split"]
    lines = ["\t".join(header)]
    image = _b64_png((0, 0, 255))
    for index, question, hint, options, answer in questions:
        for k in range(len(options)):
            opts, ans = _rotated(options, answer, k)
            cells = [str(index + k * 1_000_000), question, hint, *(opts + [""] * (4 - len(opts))), ans, "attr", image]
            lines.append("\t".join(cells + ["src", "dev"]))
    name = "mmbench_dev_cn_20231003.tsv" if cn else "mmbench_dev_20230712.tsv"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    preds = {
        # question 0, every row right (B; copies: A, D, C)
        "0": "B",
        "1000000": "A",
        "2000000": "D",
        "3000000": "C",
        # question 1: the original right, its copy ([no, yes], answer B) wrong
        "1": "A",
        "1000001": "A",
        # question 2: the original by the option's text (bird = C), the copies by letter, all right
        "2": "bird",
        "1000002": "B",
        "2000002": "A",
    }
    # circular: 0 and 2 right, 1 wrong -> 2/3; the originals alone: 3/3
    return Case(preds, {"accuracy": 100 * 2 / 3, "accuracy_single_pass": 100.0, "n": 3, "rows": 9}, 9)


def mme(d: Path) -> Case:
    # LLaVA's llava_mme.jsonl: question_id "subtask/image", shared by an image's two questions; the text
    # ends with the short-answer suffix instead of " Please answer yes or no.", which
    # convert_answer_to_mme.py puts back (with two spaces where MME's own file has them).
    release = d / "MME_Benchmark_release_version"
    _png(release / "color" / "000000008277.jpg")
    _png(release / "color" / "000000012120.jpg")
    _png(release / "artwork" / "images" / "10002.jpg")
    (release / "color" / "000000008277.txt").write_text(
        "Is there a red coat in the image? Please answer yes or no.\tYes\n"
        "Is there a yellow coat in the image? Please answer yes or no.\tNo\n"
    )
    (release / "color" / "000000012120.txt").write_text(
        "Is there a blue sky in the image?  Please answer yes or no.\tYes\n"
        "Is there a green sky in the image? Please answer yes or no.\tNo\n"
    )
    (release / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (release / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork a painting? Please answer yes or no.\tYes\n"
        "Is this artwork a sculpture? Please answer yes or no.\tNo\n"
    )
    rows = [
        ("color/000000008277.jpg", "color/000000008277.jpg", "Is there a red coat in the image?"),
        ("color/000000008277.jpg", "color/000000008277.jpg", "Is there a yellow coat in the image?"),
        ("color/000000012120.jpg", "color/000000012120.jpg", "Is there a blue sky in the image?"),
        ("color/000000012120.jpg", "color/000000012120.jpg", "Is there a green sky in the image?"),
        ("artwork/10002.jpg", "artwork/images/10002.jpg", "Is this artwork a painting?"),
        ("artwork/10002.jpg", "artwork/images/10002.jpg", "Is this artwork a sculpture?"),
    ]
    _jsonl(
        d / "llava_mme.jsonl",
        [{"question_id": q, "image": i, "text": f"{t}\n{SHORT}", "category": q.split("/")[0]} for q, i, t in rows],
    )
    preds = {
        "color/000000008277.jpg": "Yes",  # right
        "color/000000008277.jpg#1": "No",  # right: the image's pair is right
        "color/000000012120.jpg": "yes",  # right (found through the two-space question)
        "color/000000012120.jpg#1": "Yes",  # wrong
        "artwork/10002.jpg": "No",  # wrong
        "artwork/10002.jpg#1": "no, it is not",  # right ("no" in the first four characters)
    }
    # color: acc 3/4, acc+ 1/2 -> 75 + 50 = 125; artwork: acc 1/2, acc+ 0 -> 50; perception 175
    expected = {
        "subtasks": {
            "artwork": {"acc": 50.0, "acc_plus": 0.0, "score": 50.0},
            "color": {"acc": 75.0, "acc_plus": 50.0, "score": 125.0},
        },
        "perception": 175.0,
        "cognition": 0.0,
        "n": 6,
    }
    return Case(preds, expected, 6)


def pope(d: Path) -> Case:
    _png(d / "val2014" / "COCO_val2014_000000310196.jpg")
    labels = {"adversarial": ["yes", "no", "yes", "no"], "random": ["yes", "yes", "no", "no"]}
    image = "COCO_val2014_000000310196.jpg"
    test_rows = []
    for split, split_labels in labels.items():
        rows = [
            {"question_id": n + 1, "image": image, "text": f"Is there a thing {n} in the image?", "label": label}
            for n, label in enumerate(split_labels)
        ]
        _jsonl(d / "coco" / f"coco_pope_{split}.json", rows)
        test_rows += [{**r, "category": split} for r in rows]
    _jsonl(d / "llava_pope_test.jsonl", test_rows)  # LLaVA's question file: read by nothing here
    preds = {
        # adversarial: yes, no, no, yes against yes, no, yes, no -> tp 1, tn 1, fn 1, fp 1: all 0.5
        "adversarial-1": "Yes",
        "adversarial-2": "No",
        "adversarial-3": "No, there is not.",
        "adversarial-4": "Yes",
        # random: every one right
        "random-1": "Yes",
        "random-2": "Yes, there is.",
        "random-3": "No",
        "random-4": "There is no cat.",
    }
    half = {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5, "unclear": 0, "n": 4}
    full = {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5, "unclear": 0, "n": 4}
    return Case(preds, {"adversarial": half, "random": full, "f1": 75.0, "accuracy": 75.0}, 8)


WRITERS = {
    "vqav2": vqav2,
    "gqa": gqa,
    "textvqa": textvqa,
    "vizwiz": vizwiz,
    "scienceqa": scienceqa,
    "mmmu": mmmu,
    "mmbench": mmbench,
    "mmbench_cn": lambda d: mmbench(d, cn=True),
    "mme": mme,
    "pope": pope,
}


def write(name: str, folder: Path) -> Case:
    return WRITERS[name](folder)


def flat(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics as one level of dotted keys (``color.acc``), for ``pytest.approx``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
