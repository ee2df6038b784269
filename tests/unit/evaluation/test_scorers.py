"""Scorers on plain strings, including the tricky cases."""

import pytest

from switchkd.evaluation.scorers import (
    circular_accuracy,
    mme_scores,
    mmmu_open_correct,
    normalize_answer,
    pope_metrics,
    vqa_accuracy,
    yes_no,
)


@pytest.mark.parametrize(
    "raw,want",
    [
        ("Two.", "2"),
        ("The dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("yes!", "yes"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("red, white", "red white"),
        ("left-hand", "left hand"),
        ("  Ten\n", "10"),
        ("none", "0"),
    ],
)
def test_vqa_normalisation(raw, want):
    assert normalize_answer(raw) == want


def test_vqa_accuracy_leave_one_out():
    ten = ["2"] * 3 + ["3"] * 7
    # 3 humans said "2": the subsets without one of them see 2 matches (2/3), the other 7 see 3 (1).
    assert vqa_accuracy("two", ten) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("3", ten) == 1.0
    assert vqa_accuracy("4", ten) == 0.0
    one = ["cat"] + ["dog"] * 9
    assert vqa_accuracy("cat", one) == pytest.approx(9 / 10 * (1 / 3))
    assert vqa_accuracy("Dog.", ["dog"] * 10) == 1.0


def test_mmbench_fails_when_one_rotation_is_wrong():
    results = {"q1": [True, True, True, True], "q2": [True, False, True, True]}
    assert circular_accuracy(results) == 0.5


def test_mme_acc_plus_needs_both_questions_of_an_image():
    rows = [
        {"subtask": "color", "image": "a.jpg", "prediction": "Yes", "answer": "Yes"},
        {"subtask": "color", "image": "a.jpg", "prediction": "No", "answer": "No"},
        {"subtask": "color", "image": "b.jpg", "prediction": "Yes", "answer": "Yes"},
        {"subtask": "color", "image": "b.jpg", "prediction": "Yes, it is", "answer": "No"},
        {"subtask": "code_reasoning", "image": "c.png", "prediction": "maybe", "answer": "Yes"},
        {"subtask": "code_reasoning", "image": "c.png", "prediction": "No.", "answer": "No"},
    ]
    out = mme_scores(rows)
    color = out["subtasks"]["color"]
    assert color["acc"] == pytest.approx(75.0) and color["acc_plus"] == pytest.approx(50.0)
    assert color["score"] == pytest.approx(125.0)
    assert out["subtasks"]["code_reasoning"]["score"] == pytest.approx(50.0)  # "maybe" is neither: wrong
    assert out["perception"] == pytest.approx(125.0) and out["cognition"] == pytest.approx(50.0)
    assert yes_no("Yes, there is") == "yes" and yes_no("Not at all") == "no" and yes_no("perhaps") == "other"


def test_pope_with_unparseable_answers():
    preds = ["Yes", "No, there is not.", "There is a dog.", "I cannot tell", "yes it is", "No"]
    labels = ["yes", "no", "no", "yes", "yes", "yes"]
    m = pope_metrics(preds, labels)
    # LLaVA's rule: no "no"/"not" word -> yes. "I cannot tell" has no such word either.
    assert m["unclear"] == 2  # "There is a dog." and "I cannot tell"
    # predicted: yes, no, yes, yes, yes, no -> tp 3 (0, 3, 4), fp 1 (2), tn 1 (1), fn 1 (5)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["yes_ratio"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        pope_metrics(["yes"], [])


def test_mmmu_open_answers():
    assert mmmu_open_correct("The answer is 3.50", "3.5")
    assert mmmu_open_correct("So the total is 1,200 dollars.", "1200")
    assert mmmu_open_correct("Therefore the region is the cerebellum.", "cerebellum")
    assert not mmmu_open_correct("It is 4", "5")
