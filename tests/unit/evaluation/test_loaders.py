"""The loaders on files in LLaVA-1.5's eval layouts: each question joined to its own ground truth,
metrics from pre-written predictions equal to the hand-computed ones (tests/llava_eval_files.py), and
files that cannot be joined refused in one line naming the file."""

import json

import pytest

from switchkd.evaluation import BENCHMARKS, get_benchmark
from switchkd.evaluation.benchmarks import BenchmarkFileError, textvqa_question
from tests import llava_eval_files
from tests.llava_eval_files import flat


def _load_and_score(name, folder):
    case = llava_eval_files.write(name, folder)
    bench = get_benchmark(name)
    items = bench.load(folder)
    return case, items, bench.score(items, case.predictions)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_pre_written_predictions_score_as_computed_by_hand(tmp_path, name):
    case, items, metrics = _load_and_score(name, tmp_path)
    assert sorted(i.id for i in items) == sorted(case.predictions)  # the ids the join must give
    assert len(items) == case.questions
    assert flat(metrics) == pytest.approx(flat(case.expected))


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_an_answer_moved_to_its_neighbour_changes_the_score(tmp_path, name):
    """Each question scored against its neighbour's prediction scores differently: a join that pairs
    questions with the wrong ground truth cannot give the hand-computed metrics."""
    case, items, metrics = _load_and_score(name, tmp_path)
    ids = [i.id for i in items]
    shifted = {i: case.predictions[j] for i, j in zip(ids, ids[1:] + ids[:1])}
    assert flat(get_benchmark(name).score(items, shifted)) != pytest.approx(flat(metrics))


def test_mmbench_asks_each_row_once_and_groups_its_circular_copies(tmp_path):
    case, items, metrics = _load_and_score("mmbench", tmp_path)
    assert len(items) == 9 and len({int(i.id) % 1_000_000 for i in items}) == metrics["n"] == 3
    copy = next(i for i in items if i.id == "1000002")
    assert copy.meta["options"] == ["dog", "bird", "cat"] and copy.meta["answer"] == "B"  # as the file has it
    # LLaVA's prompt: the hint on its own line before the question, no "Hint:" label
    original = next(i for i in items if i.id == "2")
    assert original.prompt == (
        "Look closely.\nWhat animal?\nA. cat\nB. dog\nC. bird\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_mmbench_cn_uses_the_chinese_instruction(tmp_path):
    _case, items, _ = _load_and_score("mmbench_cn", tmp_path)
    assert all(i.prompt.endswith("请直接回答选项字母。") for i in items)


def test_mmbench_test_split_without_answers_is_refused_in_one_line(tmp_path):
    llava_eval_files.write("mmbench", tmp_path)
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    col = header.index("answer")
    tsv.write_text("\n".join("\t".join(c for k, c in enumerate(x.split("\t")) if k != col) for x in lines) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"mmbench_dev_20230712.tsv: no answer column \(a test split"):
        get_benchmark("mmbench").load(tmp_path)


def test_mmbench_bad_image_names_the_row(tmp_path):
    llava_eval_files.write("mmbench", tmp_path)
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    lines = tsv.read_text().splitlines()
    cells = lines[3].split("\t")
    cells[9] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
    lines[3] = "\t".join(cells)
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"mmbench_dev_20230712.tsv:4: the image is not a base64 picture"):
        get_benchmark("mmbench").load(tmp_path)


def test_textvqa_joins_on_image_id_and_question_as_llava(tmp_path):
    _case, items, _ = _load_and_score("textvqa", tmp_path)
    by_id = {i.id: i for i in items}
    # the image's two questions get their own answers, not the image's first question's
    assert by_id["34602"].meta["answers"][0] == "nokia" and by_id["34603"].meta["answers"][0] == "3310"
    assert by_id["34603"].prompt.startswith("what number is shown?\nReference OCR token: nokia, 3310")


@pytest.mark.parametrize(
    "prompt,question",
    [
        (f"what is it?\nReference OCR token: a, b\n{llava_eval_files.SHORT}", "what is it?"),
        ("Reference OCR token: a, b\nWhat is it?\nAnswer briefly.", "what is it?"),
        ("OCR tokens: a b Question: What is it? Short answer:", "what is it?"),
        (f"What is it?\n{llava_eval_files.SHORT}", "what is it?"),
        ("What is it?", "what is it?"),
    ],
)
def test_textvqa_question_is_read_from_the_prompt_as_llava_reads_it(prompt, question):
    assert textvqa_question(prompt) == question


def test_textvqa_with_textvqa_question_ids_still_joins(tmp_path):
    llava_eval_files.write("textvqa", tmp_path)
    (tmp_path / "llava_textvqa_val_v051_ocr.jsonl").write_text(
        json.dumps({"question_id": 34604, "image": "0054c91397f2fe05.jpg", "text": "what does the sign say?"}) + "\n"
    )
    items = get_benchmark("textvqa").load(tmp_path)
    assert [i.id for i in items] == ["34604"] and items[0].meta["answers"][0] == "stop"


@pytest.mark.parametrize(
    "name,edit,message",
    [
        ("vqav2", lambda d: (d / "llava_vqav2_mscoco_val2014.jsonl").unlink(), "no question of .* joins"),
        ("vizwiz", lambda d: (d / "llava_vizwiz_val.jsonl").unlink(), r"llava_test.jsonl joins val.json"),
        ("textvqa", lambda d: (d / "TextVQA_0.5.1_val.json").write_text('{"data": []}'), "joins TextVQA_0.5.1_val"),
        ("mme", lambda d: _blank_mme_answers(d), "no question of .*llava_mme.jsonl joins"),
        ("gqa", lambda d: (d / "testdev_balanced_questions.json").write_text("{}"), "joins testdev_balanced"),
    ],
)
def test_a_file_that_joins_nothing_is_refused_naming_it(tmp_path, name, edit, message):
    llava_eval_files.write(name, tmp_path)
    edit(tmp_path)
    with pytest.raises(BenchmarkFileError, match=message) as info:
        get_benchmark(name).load(tmp_path)
    assert "\n" not in str(info.value)


def _blank_mme_answers(d):
    for txt in (d / "MME_Benchmark_release_version").rglob("*.txt"):
        txt.write_text(txt.read_text().replace("image?", "picture?").replace("artwork a", "work a"))


def test_mme_answers_from_mme_eval_tool_when_the_release_folder_has_none(tmp_path):
    case = llava_eval_files.write("mme", tmp_path)
    release = tmp_path / "MME_Benchmark_release_version"
    results = tmp_path / "eval_tool" / "Your_Results"
    results.mkdir(parents=True)
    for task in ("color", "artwork"):
        lines = []
        for txt in sorted(release.joinpath(task).rglob("*.txt")):
            lines += [f"{txt.stem}.jpg\t{line}" for line in txt.read_text().splitlines()]
            txt.unlink()
        (results / f"{task}.txt").write_text("\n".join(lines) + "\n")
    bench = get_benchmark("mme")
    assert flat(bench.score(bench.load(tmp_path), case.predictions)) == pytest.approx(flat(case.expected))


def test_a_torn_line_names_the_file_and_line(tmp_path):
    llava_eval_files.write("pope", tmp_path)
    path = tmp_path / "coco" / "coco_pope_random.json"
    path.write_text(path.read_text() + '{"question_id": 9, "te\n')
    with pytest.raises(BenchmarkFileError, match=r"coco_pope_random.json:5: not JSON"):
        get_benchmark("pope").load(tmp_path)


def test_mmmu_answer_outside_the_options_names_the_record(tmp_path):
    llava_eval_files.write("mmmu", tmp_path)
    path = tmp_path / "mmmu_validation.jsonl"
    path.write_text(path.read_text().replace('"answer": "B"', '"answer": "E"'))
    with pytest.raises(BenchmarkFileError, match=r"mmmu_validation.jsonl:1: answer 'E' is not one of the 4"):
        get_benchmark("mmmu").load(tmp_path)


@pytest.mark.parametrize(
    "name,file",
    [
        ("vqav2", "llava_vqav2_mscoco_val2014.jsonl"),
        ("textvqa", "llava_textvqa_val_v051_ocr.jsonl"),
        ("mme", "llava_mme.jsonl"),
    ],
)
def test_a_question_without_an_image_field_names_the_file(tmp_path, name, file):
    llava_eval_files.write(name, tmp_path)
    path = tmp_path / file
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0].pop("image")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkFileError, match=rf"{file}: no 'image' field"):
        get_benchmark(name).load(tmp_path)


def test_a_file_that_is_not_utf8_names_it(tmp_path):
    llava_eval_files.write("gqa", tmp_path)
    (tmp_path / "llava_gqa_testdev_balanced.jsonl").write_bytes(b'{"question_id": "\xff"}\n')
    with pytest.raises(BenchmarkFileError, match=r"llava_gqa_testdev_balanced.jsonl: not UTF-8 text"):
        get_benchmark("gqa").load(tmp_path)
