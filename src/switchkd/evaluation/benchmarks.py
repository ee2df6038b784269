"""The paper's ten benchmarks: loaders for their usual local files (the layouts
LLaVA-1.5's evaluation uses), prompts with the standard suffixes, and scoring.

Each benchmark is ``load(data_dir) -> list[Item]`` and ``score(items, predictions) -> metrics``;
``BENCHMARKS[name]`` holds both. See docs/evaluation.md for the expected files.
"""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import logging
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from switchkd.config import read_utf8
from switchkd.data.images import resolve_image_path
from switchkd.evaluation import scorers

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."
CHOICE_CN = "请直接回答选项字母。"
log = logging.getLogger("switchkd.eval")

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


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read or joined to its ground truth (one line, naming the file)."""


def _candidates(data_dir: Path, *names: str) -> list[Path]:
    """The files matching ``names`` (glob patterns, in order of preference; sorted within a pattern)."""
    found: list[Path] = []
    for pattern in names:
        found += [p for p in sorted(data_dir.glob(pattern)) if p.is_file() and p not in found]
    if not found:
        raise FileNotFoundError(f"{data_dir}: none of {', '.join(names)} found (see docs/evaluation.md)")
    return found


def _first(data_dir: Path, *names: str) -> Path:
    return _candidates(data_dir, *names)[0]


def _image_root(data_dir: Path, *candidates: str) -> Path:
    for c in candidates:
        if (data_dir / c).is_dir():
            return data_dir / c
    return data_dir


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(read_utf8(path, BenchmarkFileError).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkFileError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{path}:{number}: not a JSON object")
        rows.append(row)
    return rows


def read_json(path: Path):
    try:
        return json.loads(read_utf8(path, BenchmarkFileError))
    except json.JSONDecodeError as exc:
        raise BenchmarkFileError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def _field(row: dict, key: str, where: str):
    if key not in row:
        raise BenchmarkFileError(f"{where}: no {key!r} field")
    return row[key]


def _unique(ids: list[str]) -> list[str]:
    """Ids made unique in file order: the k-th repeat of an id (k >= 1) becomes ``id#k`` (LLaVA's MME
    and TextVQA files repeat an id for an image's questions)."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        k = seen.get(i, 0)
        seen[i] = k + 1
        out.append(i if k == 0 else f"{i}#{k}")
    return out


def _no_join(name: str, questions: Path, truth: str, on: str) -> BenchmarkFileError:
    return BenchmarkFileError(f"{name}: no question of {questions} joins {truth} (joined on {on}); nothing to score")


def _skipped(name: str, questions: Path, skipped: int, total: int) -> None:
    if skipped:
        log.warning("%s: %d of %d questions in %s have no ground truth; skipped", name, skipped, total, questions)


def _question_item(item_id: str, q: dict, meta: dict, *, root: Path, qfile: Path, suffix: str) -> Item:
    """An item from a LLaVA question row (``text``, ``image``): the prompt with ``suffix``, the image
    under ``root``."""
    text, image = _field(q, "text", str(qfile)), _field(q, "image", str(qfile))
    return Item(item_id, _with_suffix(str(text), suffix), str(resolve_image_path(root, image)), meta)


def mean_percent(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / max(len(values), 1)


# ---- VQA-style ----------------------------------------------------------------------------------


def _load_vqa_style(
    name: str, data_dir: Path, questions: tuple[str, ...], truth_of, *, join: str, images: tuple[str, ...], suffix: str
) -> list[Item]:
    """Questions joined to their answers by ``join`` (``question_id`` or ``image``). Of several question
    files (LLaVA's test-dev and a val file side by side, say), the first in ``questions`` order that
    joins is read: a split scored by a server has no local answers."""
    files = _candidates(data_dir, *questions)
    truth, truth_name = truth_of(data_dir)
    root = _image_root(data_dir, *images)
    for qfile in files:
        rows = read_jsonl(qfile)
        keys = [str(_field(q, join, f"{qfile}:{n}")) for n, q in enumerate(rows, 1)]
        joined = [(q, k) for q, k in zip(rows, keys) if k in truth]
        if not joined:
            continue
        _skipped(name, qfile, len(rows) - len(joined), len(rows))
        ids = _unique([str(_field(q, "question_id", str(qfile))) for q, _ in joined])
        where = {"root": root, "qfile": qfile, "suffix": suffix}
        return [_question_item(i, q, {"answers": truth[k]}, **where) for i, (q, k) in zip(ids, joined)]
    raise _no_join(name, files[0] if len(files) == 1 else ", ".join(map(str, files)), truth_name, join)


def _vqav2_answers(data_dir: Path) -> tuple[dict, str]:
    path = _first(data_dir, "v2_mscoco_val2014_annotations.json", "*annotations*.json")
    ann = _field(read_json(path), "annotations", str(path))
    return {str(a["question_id"]): [x["answer"] for x in a["answers"]] for a in ann}, path.name


def _vizwiz_answers(data_dir: Path) -> tuple[dict, str]:
    path = _first(data_dir, "val.json", "*annotations*.json")
    return {d["image"]: [a["answer"] for a in d["answers"]] for d in read_json(path)}, path.name


def _gqa_answers(data_dir: Path) -> tuple[dict, str]:
    path = _first(data_dir, "testdev_balanced_questions.json", "*questions*.json")
    return {str(k): v["answer"] for k, v in read_json(path).items()}, path.name


def textvqa_question(prompt: str) -> str:
    """The question inside a TextVQA prompt, as LLaVA's ``eval_textvqa.py`` reads it: the line before
    (or after) ``Reference OCR token: ...``, the first of two lines, the text between ``Question:`` and
    ``Short answer:`` of an ``OCR tokens:`` prompt; a one-line prompt is its own question (LLaVA stops
    there). Lower case, as the join compares it."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        question = match.group(1) if match else prompt
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) in (1, 2):
        question = lines[0]
    else:
        raise ValueError(f"a TextVQA prompt of {len(lines)} lines without 'Reference OCR token: '")
    return question.lower()


def _load_textvqa(data_dir: Path) -> list[Item]:
    """LLaVA's ``llava_textvqa_val_v051_ocr.jsonl`` carries the TextVQA *image* id as ``question_id``
    (repeated when an image has two questions), and its ``eval_textvqa.py`` joins on (image id,
    question text in lower case): so does this. A file whose ``question_id`` is TextVQA's own integer
    question id joins on that. The item id is TextVQA's question id."""
    apath = _first(data_dir, "TextVQA_0.5.1_val.json", "TextVQA*.json")
    data = _field(read_json(apath), "data", str(apath))
    by_image = {
        (str(a["image_id"]), a["question"].lower()): a for a in data if "image_id" in a
    }  # last wins, as LLaVA's
    by_id = {str(a["question_id"]): a for a in data}
    qfile = _first(data_dir, "llava_textvqa_val_v051_ocr.jsonl", "*.jsonl")
    root = _image_root(data_dir, "train_images", "images")
    rows = read_jsonl(qfile)
    joined = []
    for n, q in enumerate(rows, 1):
        where = f"{qfile}:{n}"
        qid, text = str(_field(q, "question_id", where)), str(_field(q, "text", where))
        try:
            key = (qid, textvqa_question(text))
        except ValueError as exc:
            raise BenchmarkFileError(f"{where}: {exc}") from None
        ann = by_image.get(key) or by_id.get(qid)
        if ann is not None:
            joined.append((q, ann))
    if not joined:
        raise _no_join("textvqa", qfile, apath.name, "image id + question, or question id")
    _skipped("textvqa", qfile, len(rows) - len(joined), len(rows))
    ids = _unique([str(ann["question_id"]) for _, ann in joined])
    where = {"root": root, "qfile": qfile, "suffix": SHORT}
    return [_question_item(i, q, {"answers": ann["answers"]}, **where) for i, (q, ann) in zip(ids, joined)]


def _score_vqa(items, preds, accuracy=scorers.vqa_accuracy) -> dict:
    return {"accuracy": mean_percent(accuracy(preds.get(i.id, ""), i.meta["answers"]) for i in items), "n": len(items)}


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
    ppath = _first(data_dir, "problems.json")
    problems = read_json(ppath)
    split = _first(data_dir, "llava_test_CQM-A.json", "llava_test*.json")
    root = _image_root(data_dir, "images/test", "images")
    items = []
    for n, rec in enumerate(read_json(split)):
        pid = str(_field(rec, "id", f"{split}: record {n}"))
        if pid not in problems:
            raise BenchmarkFileError(f"{split}: record {n}: problem {pid!r} is not in {ppath.name}")
        prob = problems[pid]
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


def _mmmu_options(rec: dict, where: str) -> list[str]:
    """A list, or MMMU's own string form of one (``"['a', 'b']"``, as its parquet files store it)."""
    options = _field(rec, "options", where)
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options)
        except (ValueError, SyntaxError):
            raise BenchmarkFileError(f"{where}: options {options[:60]!r} is not a list") from None
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise BenchmarkFileError(f"{where}: options must be a non-empty list of strings")
    return options


def _load_mmmu(data_dir: Path) -> list[Item]:
    path = _first(data_dir, "mmmu*.jsonl")
    items = []
    for n, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}:{n}"
        image = rec.get("image") or rec.get("image_1")
        image = str(resolve_image_path(data_dir, image)) if image else None
        qid, question, answer = (
            str(_field(rec, "id", where)),
            _field(rec, "question", where),
            _field(rec, "answer", where),
        )
        if rec.get("question_type", "multiple-choice") == "multiple-choice":
            options = _mmmu_options(rec, where)
            if answer not in [chr(ord("A") + k) for k in range(len(options))]:
                raise BenchmarkFileError(f"{where}: answer {answer!r} is not one of the {len(options)} option letters")
            items.append(
                Item(
                    qid, _choice_prompt(question, options), image, {"options": options, "answer": answer, "open": False}
                )
            )
        else:
            items.append(Item(qid, _with_suffix(question, SHORT), image, {"answer": answer, "open": True}))
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


MMBENCH_COPY = 1_000_000  # a circular copy of question q is row q + k * 1e6, its options rotated by k


def _missing(value) -> bool:
    return value is None or value.strip() in ("", "nan", "NaN", "None")


def _tsv_rows(path: Path) -> list[tuple[int, dict]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [(reader.line_num, row) for row in reader]
    missing = {"index", "question", "A", "B", "answer", "image"} - set(reader.fieldnames or ())
    if missing:
        test = " (a test split: its answers are on the MMBench server)" if missing == {"answer"} else ""
        raise BenchmarkFileError(f"{path}: no {', '.join(sorted(missing))} column{test}")
    return rows


def _mmbench_image(b64: str, cache: dict, where: str) -> Image.Image:
    if b64 not in cache:  # the circular copies of a question carry the same image
        try:
            cache[b64] = Image.open(io.BytesIO(base64.b64decode(b64, validate=True))).convert("RGB")
        except (ValueError, UnidentifiedImageError, OSError) as exc:
            raise BenchmarkFileError(f"{where}: the image is not a base64 picture ({exc})") from None
    return cache[b64]


def _load_mmbench(data_dir: Path, cn: bool) -> list[Item]:
    """Every row of the TSV asked once, as LLaVA's ``model_vqa_mmbench.py`` does: the distributed dev
    files already hold each question's circular copies as rows ``index + k * 1e6`` with the options
    rotated, which the scoring groups back together (``index mod 1e6``), as VLMEvalKit does."""
    tsv = _first(data_dir, "mmbench_dev_cn*.tsv" if cn else "mmbench_dev_[0-9]*.tsv", "*.tsv")
    images: dict[str, Image.Image] = {}
    items = []
    for line, row in _tsv_rows(tsv):
        where = f"{tsv}:{line}"
        try:
            index = int(float(row["index"]))
        except (TypeError, ValueError):
            raise BenchmarkFileError(f"{where}: index {row['index']!r} is not a number") from None
        options = []
        for letter in "ABCD":  # up to the first empty option, as LLaVA reads them
            if _missing(row.get(letter)):
                break
            options.append(row[letter])
        answer = (row["answer"] or "").strip()
        if answer not in "ABCD"[: len(options)] or not answer:
            raise BenchmarkFileError(f"{where}: answer {answer!r} is not one of the {len(options)} option letters")
        hint = None if _missing(row.get("hint")) else row["hint"]
        question = row["question"] if hint is None else f"{hint}\n{row['question']}"  # LLaVA: no "Hint:" label
        items.append(
            Item(
                str(index),
                _choice_prompt(question, options, suffix=CHOICE_CN if cn else CHOICE),
                _mmbench_image(row["image"], images, where),
                {
                    "options": options,
                    "answer": answer,
                    "question": index % MMBENCH_COPY,
                    "copy": index >= MMBENCH_COPY,
                    "category": row.get("category"),
                },
            )
        )
    return items


def _score_mmbench(items, preds) -> dict:
    """Circular accuracy: a question (its rows grouped by ``index mod 1e6``) counts only if every row is
    answered right; ``accuracy_single_pass`` reads only the original rows (index < 1e6). A file without
    copies has one row a question, and the two agree."""
    results: dict[int, list[bool]] = defaultdict(list)
    single = []
    for i in items:
        right = scorers.extract_choice(preds.get(i.id, ""), i.meta["options"]) == i.meta["answer"]
        results[i.meta["question"]].append(right)
        if not i.meta["copy"]:
            single.append(right)
    return {
        "accuracy": 100 * scorers.circular_accuracy(results),
        "accuracy_single_pass": mean_percent(single),
        "n": len(results),
        "rows": len(items),
    }


YES_NO = "Please answer yes or no."


def _read_mme_lines(path: Path, fields: int) -> list[list[str]]:
    out = []
    for n, line in enumerate(read_utf8(path, BenchmarkFileError).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) < fields:
            raise BenchmarkFileError(f"{path}:{n}: expected {fields} tab-separated fields, found {len(parts)}")
        out.append(parts)
    return out


def _mme_truth(data_dir: Path) -> tuple[dict, str]:
    """{(subtask, "<image stem>.txt", question): "Yes"/"No"}, the key LLaVA's ``convert_answer_to_mme.py``
    looks answers up by: from the release folder (a ``<image>.txt`` of question/answer lines beside each
    image, or in ``questions_answers_YN/`` for the subtasks with an ``images/`` folder), else from MME's
    ``eval_tool/Your_Results/<subtask>.txt`` (image, question, answer)."""
    truth = {}
    release = data_dir / "MME_Benchmark_release_version"
    for task in sorted(p for p in release.glob("*") if p.is_dir()):
        qa = task / "questions_answers_YN" if (task / "images").is_dir() else task
        for txt in sorted(qa.glob("*.txt")):
            for question, answer, *_ in _read_mme_lines(txt, 2):
                truth[(task.name, txt.name, question)] = answer
    if truth:
        return truth, str(release)
    results = data_dir / "eval_tool" / "Your_Results"
    for txt in sorted(results.glob("*.txt")):
        for image, question, answer, *_ in _read_mme_lines(txt, 3):
            truth[(txt.stem, image.split(".")[0] + ".txt", question)] = answer
    if not truth:
        raise FileNotFoundError(
            f"{data_dir}: no MME answers in MME_Benchmark_release_version/ nor eval_tool/Your_Results/"
        )
    return truth, str(results)


def _mme_key(truth: dict, question_id: str, text: str) -> tuple[str, str, str]:
    """LLaVA's lookup: subtask and image from ``question_id`` (``subtask/image``); the question without
    the short-answer suffix, with " Please answer yes or no." put back (or with two spaces before it)."""
    subtask, file = question_id.split("/")[0], question_id.split("/")[-1].split(".")[0] + ".txt"
    prompt = text.replace(SHORT, "").strip() if SHORT in text else text
    if YES_NO not in prompt:
        prompt = f"{prompt} {YES_NO}"
        if (subtask, file, prompt) not in truth:
            prompt = prompt.replace(f" {YES_NO}", f"  {YES_NO}")
    return subtask, file, prompt


def _load_mme(data_dir: Path) -> list[Item]:
    truth, truth_name = _mme_truth(data_dir)
    root = _image_root(data_dir, "MME_Benchmark_release_version")
    qfile = _first(data_dir, "llava_mme.jsonl")
    rows = read_jsonl(qfile)
    joined = []
    for n, q in enumerate(rows, 1):
        where = f"{qfile}:{n}"
        key = _mme_key(truth, str(_field(q, "question_id", where)), str(_field(q, "text", where)))
        if key in truth:
            joined.append((q, key))
    if not joined:
        raise _no_join("mme", qfile, truth_name, "subtask/image of question_id + question")
    _skipped("mme", qfile, len(rows) - len(joined), len(rows))
    ids = _unique([str(q["question_id"]) for q, _ in joined])
    where = {"root": root, "qfile": qfile, "suffix": SHORT}
    return [
        _question_item(i, q, {"subtask": task, "image": file, "answer": truth[(task, file, prompt)]}, **where)
        for i, (q, (task, file, prompt)) in zip(ids, joined)
    ]


def _score_mme(items, preds) -> dict:
    rows = [{**i.meta, "prediction": preds.get(i.id, "")} for i in items]
    return {**scorers.mme_scores(rows), "n": len(items)}


def _load_pope(data_dir: Path) -> list[Item]:
    """The label files themselves (``coco/coco_pope_<split>.json``, JSON lines with the question and its
    label); LLaVA's ``llava_pope_test.jsonl`` holds the same questions, and its ``eval_pope.py`` pairs
    answers with these labels."""
    root = _image_root(data_dir, "val2014", "images")
    items = []
    for path in sorted((data_dir / "coco").glob("coco_pope_*.json")) or sorted(data_dir.glob("coco_pope_*.json")):
        split = path.stem.replace("coco_pope_", "")
        for n, q in enumerate(read_jsonl(path), 1):
            where = f"{path}:{n}"
            label = str(_field(q, "label", where)).strip().lower()
            if label not in ("yes", "no"):
                raise BenchmarkFileError(f"{where}: label {label!r} is neither yes nor no")
            items.append(
                Item(
                    f"{split}-{_field(q, 'question_id', where)}",
                    _with_suffix(str(_field(q, "text", where)), SHORT),
                    str(resolve_image_path(root, _field(q, "image", where))),
                    {"label": label, "split": split},
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
            "vqav2",
            d,
            ("llava_vqav2*.jsonl", "*.jsonl"),
            _vqav2_answers,
            join="question_id",
            images=("val2014", "images"),
            suffix=SHORT,
        ),
        _score_vqa,
    ),
    "gqa": Benchmark(
        "gqa",
        lambda d: _load_vqa_style(
            "gqa",
            d,
            ("llava_gqa_testdev_balanced.jsonl", "*.jsonl"),
            _gqa_answers,
            join="question_id",
            images=("images",),
            suffix=SHORT,
        ),
        _score_gqa,
    ),
    "textvqa": Benchmark(
        "textvqa", _load_textvqa, lambda items, preds: _score_vqa(items, preds, scorers.textvqa_accuracy)
    ),
    "vizwiz": Benchmark(
        "vizwiz",
        lambda d: _load_vqa_style(
            "vizwiz",
            d,
            ("llava_vizwiz*.jsonl", "llava_test.jsonl", "*.jsonl"),
            _vizwiz_answers,
            join="image",
            images=("val", "images"),
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
