"""The paper's ten benchmarks: loaders for their usual local files (the layouts
LLaVA-1.5's evaluation uses), prompts with the standard suffixes, and scoring.

Each benchmark is ``load(data_dir) -> list[Item]`` and ``score(items, predictions) -> metrics``;
``BENCHMARKS[name]`` holds both. See docs/evaluation.md for the expected files.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from switchkd.data.images import resolve_image_path
from switchkd.evaluation import scorers

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."
CHOICE_CN = "请直接回答选项字母。"
VIZWIZ = "When the provided information is insufficient, respond with 'Unanswerable'."


@dataclass
class Item:
    id: str
    prompt: str
    image: str | Image.Image | None
    meta: dict = field(default_factory=dict)


def _with_suffix(text: str, suffix: str) -> str:
    text = text.replace("<image>", "").strip()
    return text if text.endswith(suffix) else f"{text}\n{suffix}"


def _first(data_dir: Path, *names: str) -> Path:
    for pattern in names:
        found = sorted(data_dir.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(f"{data_dir}: none of {', '.join(names)} found (see docs/evaluation.md)")


def _image_root(data_dir: Path, *candidates: str) -> Path:
    for c in candidates:
        if (data_dir / c).is_dir():
            return data_dir / c
    return data_dir


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def mean_percent(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / max(len(values), 1)


# ---- VQA-style ----------------------------------------------------------------------------------


def _load_vqa_style(
    data_dir: Path, questions: tuple[str, ...], answers_of, *, image_dirs: tuple[str, ...], suffix: str
) -> list[Item]:
    qfile = _first(data_dir, *questions)
    root = _image_root(data_dir, *image_dirs)
    truth = answers_of(data_dir)
    items = []
    for q in read_jsonl(qfile):
        qid = str(q["question_id"])
        key = qid if qid in truth else q.get("image")
        if key not in truth:
            continue  # no annotation for this question (e.g. a test split): nothing to score
        items.append(
            Item(
                qid, _with_suffix(q["text"], suffix), str(resolve_image_path(root, q["image"])), {"answers": truth[key]}
            )
        )
    return items


def _vqav2_answers(data_dir: Path) -> dict:
    ann = json.loads(_first(data_dir, "v2_mscoco_val2014_annotations.json", "*annotations*.json").read_text())
    return {str(a["question_id"]): [x["answer"] for x in a["answers"]] for a in ann["annotations"]}


def _textvqa_answers(data_dir: Path) -> dict:
    data = json.loads(_first(data_dir, "TextVQA_0.5.1_val.json", "TextVQA*.json").read_text())["data"]
    return {str(d["question_id"]): d["answers"] for d in data}


def _vizwiz_answers(data_dir: Path) -> dict:
    data = json.loads(_first(data_dir, "val.json", "*annotations*.json").read_text())
    return {d["image"]: [a["answer"] for a in d["answers"]] for d in data}


def _score_vqa(items, preds, accuracy=scorers.vqa_accuracy) -> dict:
    return {"accuracy": mean_percent(accuracy(preds.get(i.id, ""), i.meta["answers"]) for i in items), "n": len(items)}


def _gqa_answers(data_dir: Path) -> dict:
    data = json.loads(_first(data_dir, "testdev_balanced_questions.json", "*questions*.json").read_text())
    return {str(k): v["answer"] for k, v in data.items()}


def _score_gqa(items, preds) -> dict:
    return {
        "accuracy": mean_percent(scorers.gqa_correct(preds.get(i.id, ""), i.meta["answers"]) for i in items),
        "n": len(items),
    }


# ---- multiple choice -----------------------------------------------------------------------------


def _choice_prompt(question: str, options: list[str], hint: str | None = None, suffix: str = CHOICE) -> str:
    lines = ([f"Hint: {hint}"] if hint else []) + [question]
    lines += [f"{chr(ord('A') + i)}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines + [suffix])


def _load_scienceqa(data_dir: Path) -> list[Item]:
    problems = json.loads(_first(data_dir, "problems.json").read_text())
    split = _first(data_dir, "llava_test_CQM-A.json", "llava_test*.json")
    root = _image_root(data_dir, "images/test", "images")
    items = []
    for rec in json.loads(split.read_text()):
        prob = problems[str(rec["id"])]
        if not rec.get("image"):
            continue  # ScienceQA-IMG: the questions with an image
        options = prob["choices"]
        context = prob.get("hint") or None
        items.append(
            Item(
                str(rec["id"]),
                _choice_prompt(prob["question"], options, context),
                str(resolve_image_path(root, rec["image"])),
                {"options": options, "answer": chr(ord("A") + prob["answer"])},
            )
        )
    return items


def _score_choice(items, preds) -> dict:
    correct = [scorers.extract_choice(preds.get(i.id, ""), i.meta["options"]) == i.meta["answer"] for i in items]
    return {"accuracy": mean_percent(correct), "n": len(items)}


def _load_mmmu(data_dir: Path) -> list[Item]:
    items = []
    for rec in read_jsonl(_first(data_dir, "mmmu*.jsonl")):
        image = str(resolve_image_path(data_dir, rec["image"])) if rec.get("image") else None
        if rec.get("question_type", "multiple-choice") == "multiple-choice":
            items.append(
                Item(
                    str(rec["id"]),
                    _choice_prompt(rec["question"], rec["options"]),
                    image,
                    {"options": rec["options"], "answer": rec["answer"], "open": False},
                )
            )
        else:
            items.append(
                Item(
                    str(rec["id"]), _with_suffix(rec["question"], SHORT), image, {"answer": rec["answer"], "open": True}
                )
            )
    return items


def _score_mmmu(items, preds) -> dict:
    ok = []
    for i in items:
        p = preds.get(i.id, "")
        if i.meta["open"]:
            ok.append(scorers.mmmu_open_correct(p, i.meta["answer"]))
        else:
            ok.append(scorers.extract_choice(p, i.meta["options"]) == i.meta["answer"])
    return {"accuracy": mean_percent(ok), "n": len(items)}


def _load_mmbench(data_dir: Path, cn: bool) -> list[Item]:
    tsv = _first(data_dir, "mmbench_dev_cn*.tsv" if cn else "mmbench_dev_[0-9]*.tsv", "*.tsv")
    csv.field_size_limit(sys.maxsize)
    items = []
    with tsv.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            options = [row[c] for c in "ABCD" if row.get(c) and row[c] != "nan"]
            image = Image.open(io.BytesIO(base64.b64decode(row["image"]))).convert("RGB")
            hint = row.get("hint") if row.get("hint") not in (None, "", "nan") else None
            for shift in range(len(options)):  # circular evaluation: every rotation of the options
                rotated, answer = scorers.rotate_options(options, row["answer"], shift)
                items.append(
                    Item(
                        f"{row['index']}-{shift}",
                        _choice_prompt(row["question"], rotated, hint, CHOICE_CN if cn else CHOICE),
                        image,
                        {
                            "options": rotated,
                            "answer": answer,
                            "question": row["index"],
                            "category": row.get("category"),
                        },
                    )
                )
    return items


def _score_mmbench(items, preds) -> dict:
    results: dict[str, list[bool]] = defaultdict(list)
    for i in items:
        results[i.meta["question"]].append(
            scorers.extract_choice(preds.get(i.id, ""), i.meta["options"]) == i.meta["answer"]
        )
    single = [r[0] for r in results.values()]
    return {
        "accuracy": 100 * scorers.circular_accuracy(results),
        "accuracy_single_pass": mean_percent(single),
        "n": len(results),
    }


def _load_mme(data_dir: Path) -> list[Item]:
    root = _image_root(data_dir, "MME_Benchmark_release_version")
    truth = {}
    for txt in sorted((data_dir / "eval_tool" / "Your_Results").glob("*.txt")):
        for line in txt.read_text(encoding="utf-8").splitlines():
            if line.strip():
                image, question, answer = line.split("\t")[:3]
                truth[(txt.stem, image, question.strip())] = answer
    items = []
    for q in read_jsonl(_first(data_dir, "llava_mme.jsonl")):
        subtask = q.get("category") or q["image"].split("/")[0]
        image_name = Path(q["image"]).name
        question = q["text"].replace(SHORT, "").strip()
        answer = truth.get((subtask, image_name, question))
        if answer is None:
            continue
        items.append(
            Item(
                str(q["question_id"]),
                _with_suffix(q["text"], SHORT),
                str(resolve_image_path(root, q["image"])),
                {"subtask": subtask, "image": image_name, "answer": answer},
            )
        )
    return items


def _score_mme(items, preds) -> dict:
    rows = [{**i.meta, "prediction": preds.get(i.id, "")} for i in items]
    return {**scorers.mme_scores(rows), "n": len(items)}


def _load_pope(data_dir: Path) -> list[Item]:
    root = _image_root(data_dir, "val2014", "images")
    items = []
    for path in sorted((data_dir / "coco").glob("coco_pope_*.json")) or sorted(data_dir.glob("coco_pope_*.json")):
        split = path.stem.replace("coco_pope_", "")
        for q in read_jsonl(path):
            items.append(
                Item(
                    f"{split}-{q['question_id']}",
                    _with_suffix(q["text"], SHORT),
                    str(resolve_image_path(root, q["image"])),
                    {"label": q["label"], "split": split},
                )
            )
    if not items:
        raise FileNotFoundError(f"{data_dir}: no coco/coco_pope_*.json files (see docs/evaluation.md)")
    return items


def _score_pope(items, preds) -> dict:
    out = {}
    for split in sorted({i.meta["split"] for i in items}):
        chosen = [i for i in items if i.meta["split"] == split]
        out[split] = scorers.pope_metrics([preds.get(i.id, "") for i in chosen], [i.meta["label"] for i in chosen])
    out["f1"] = 100 * sum(v["f1"] for v in out.values()) / len(out)
    out["accuracy"] = 100 * sum(v["accuracy"] for k, v in out.items() if isinstance(v, dict)) / (len(out) - 1)
    return out


@dataclass(frozen=True)
class Benchmark:
    name: str
    load: object
    score: object
    max_new_tokens: int = 16
    description: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    "vqav2": Benchmark(
        "vqav2",
        lambda d: _load_vqa_style(
            d, ("llava_vqav2*.jsonl", "*.jsonl"), _vqav2_answers, image_dirs=("val2014", "images"), suffix=SHORT
        ),
        _score_vqa,
    ),
    "gqa": Benchmark(
        "gqa",
        lambda d: _load_vqa_style(
            d, ("llava_gqa_testdev_balanced.jsonl", "*.jsonl"), _gqa_answers, image_dirs=("images",), suffix=SHORT
        ),
        _score_gqa,
    ),
    "textvqa": Benchmark(
        "textvqa",
        lambda d: _load_vqa_style(
            d,
            ("llava_textvqa_val_v051_ocr.jsonl", "*.jsonl"),
            _textvqa_answers,
            image_dirs=("train_images", "images"),
            suffix=SHORT,
        ),
        lambda items, preds: _score_vqa(items, preds, scorers.textvqa_accuracy),
    ),
    "vizwiz": Benchmark(
        "vizwiz",
        lambda d: _load_vqa_style(
            d,
            ("llava_vizwiz*.jsonl", "llava_test.jsonl", "*.jsonl"),
            _vizwiz_answers,
            image_dirs=("val", "images"),
            suffix=f"{VIZWIZ}\n{SHORT}",
        ),
        _score_vqa,
    ),
    "scienceqa": Benchmark("scienceqa", _load_scienceqa, _score_choice, 8),
    "mmmu": Benchmark("mmmu", _load_mmmu, _score_mmmu, 64),
    "mmbench": Benchmark("mmbench", lambda d: _load_mmbench(d, cn=False), _score_mmbench, 8),
    "mmbench_cn": Benchmark("mmbench_cn", lambda d: _load_mmbench(d, cn=True), _score_mmbench, 8),
    "mme": Benchmark("mme", _load_mme, _score_mme, 8),
    "pope": Benchmark("pope", _load_pope, _score_pope, 8),
}


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """A benchmark by name, or the given ``Benchmark`` itself (e.g. the demo's world)."""
    if isinstance(name, Benchmark):
        return name
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
