"""Question files are checked before any model loads; answer files resume past a torn last line."""

import json

import pytest
from PIL import Image

from switchkd.inference.predict import answered_ids, read_questions


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_good_questions_resolve_their_images(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = _write(
        tmp_path / "q.jsonl",
        [
            json.dumps({"question_id": 1, "image": "a.png", "text": "What?"}),
            "",
            json.dumps({"question_id": "two", "text": "Text only?"}),
        ],
    )
    questions = read_questions(path)
    assert [(q.id, q.text) for q in questions] == [(1, "What?"), ("two", "Text only?")]
    assert questions[0].image == str((tmp_path / "a.png").resolve()) and questions[1].image is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question_id": 1, "text": "a"}', '{"text": "no id"}'], r"q\.jsonl:2: a question needs a 'question_id'"),
        (['{"question_id": 1}'], r"q\.jsonl:1: question 1 needs a 'text' string"),
        (['{"question_id": [1], "text": "a"}'], r"q\.jsonl:1: a question needs a 'question_id'"),
        (['{"question_id": 1, "text": "a"', ""], r"q\.jsonl:1: malformed JSON"),
        (["[1, 2]"], r"q\.jsonl:1: a question needs"),
        (
            ['{"question_id": 7, "text": "a"}', "", '{"question_id": 7, "text": "b"}'],
            r"q\.jsonl:3: question_id 7 repeats line 1",
        ),
        (['{"question_id": 1, "text": "a", "image": "../../etc/x.png"}'], r"q\.jsonl:1: image path .* escapes"),
        (['{"question_id": 1, "text": "a", "image": ["a.png"]}'], r"q\.jsonl:1: 'image' must be a relative path"),
    ],
)
def test_bad_question_rows_name_their_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_questions(_write(tmp_path / "q.jsonl", lines))


def test_a_torn_last_answer_line_is_dropped_and_named(tmp_path, caplog):
    out = tmp_path / "answers.jsonl"
    out.write_text('{"question_id": 1, "text": "red"}\n{"question_id": 2, "text": "blue"}\n{"question_id": 3, "te')
    with caplog.at_level("WARNING"):
        assert answered_ids(out) == {1, 2}
    assert f"{out}:3: incomplete last line" in caplog.text
    assert out.read_text() == '{"question_id": 1, "text": "red"}\n{"question_id": 2, "text": "blue"}\n'
    assert answered_ids(tmp_path / "none.jsonl") == set()


def test_a_bad_complete_answer_line_is_an_error_naming_it(tmp_path):
    out = _write(tmp_path / "answers.jsonl", ['{"question_id": 1, "text": "red"}', '{"text": "no id"}'])
    with pytest.raises(ValueError, match=r"answers\.jsonl:2: not an answer row"):
        answered_ids(out)
