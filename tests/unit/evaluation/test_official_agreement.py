"""Scorers against tables of hand-checked cases: each expected value was worked out by following the
official code by hand (vqaEval.py after its 2021 fix behind LLaVA's EvalAI answer processor; m4c's
TextVQA evaluator; LLaVA's GQA conversion and GQA's eval.py; VLMEvalKit's exact matching)."""

import pytest

from switchkd.evaluation.scorers import extract_choice, gqa_correct, mmmu_open_correct, textvqa_accuracy, vqa_accuracy

YES3 = ["yes"] * 3 + ["no"] * 7

VQA_CASES = [
    # the two cases: disagreeing humans are normalised fully (number words, articles)
    ("2", ["two"] * 3 + ["2"] + ["3"] * 6, 1.0),
    ("dog", ["a dog"] * 4 + ["cat"] * 6, 1.0),
    # the prediction always goes through the EvalAI processor (LLaVA's submission step)
    ("Dog", ["dog"] * 10, 1.0),
    ("DOG.", ["dog"] * 10, 1.0),
    ("two", ["2"] * 10, 1.0),
    ("a dog", ["dog"] * 10, 1.0),
    ("1,000", ["1000"] * 10, 1.0),
    ("Ten", ["10"] * 10, 1.0),
    ("none", ["0"] * 10, 1.0),
    ("Yes!", ["yes"] * 10, 1.0),
    ("what?", ["what"] * 10, 1.0),
    ("  dog  ", ["dog"] * 10, 1.0),
    ("dog\n", ["dog"] * 10, 1.0),
    ("3.5", ["3.5"] * 10, 1.0),
    ("3.", ["3"] * 10, 1.0),
    ("u.s.", ["us"] * 10, 1.0),
    ("dont know", ["don't know"] * 10, 1.0),
    ("Unanswerable.", ["unanswerable"] * 10, 1.0),
    ("unanswerable", ["unanswerable"] * 6 + ["blue"] * 4, 1.0),
    # humans who agree are compared raw: the official code normalises them only when they disagree
    ("2", ["two"] * 10, 0.0),
    ("dog", ["a dog"] * 10, 0.0),
    ("1000", ["1,000"] * 10, 0.0),
    ("t-shirt", ["t-shirt"] * 10, 0.0),
    ("2 dogs", ["two dogs"] * 10, 0.0),
    ("yes", ["Yes"] * 10, 0.0),
    # ... and normalised when they disagree
    ("1000", ["1,000"] * 5 + ["1000"] * 5, 1.0),
    ("2 dogs", ["two dogs"] * 9 + ["2"], 1.0),
    ("red, white", ["red white"] * 5 + ["red"] * 5, 1.0),
    ("t-shirt", ["t shirt"] * 5 + ["shirt"] * 5, 1.0),
    ("an apple", ["apple"] * 2 + ["an apple"] * 2 + ["fruit"] * 6, 1.0),
    ("one", ["1"] * 3 + ["one"] + ["2"] * 6, 1.0),
    ("cant tell", ["can't tell"] * 5 + ["no"] * 5, 1.0),
    ("cannot tell", ["cant tell"] * 5 + ["no"] * 5, 0.0),
    ("blue/white", ["blue white"] * 5 + ["blue"] * 5, 1.0),
    ("blue / white", ["blue white"] * 5 + ["blue"] * 5, 1.0),
    # the EvalAI processor splits "'s", which the humans' normalisation does not
    ("The man's hat", ["man's hat"] * 4 + ["hat"] * 6, 0.0),
    # leave-one-out: min(#matches among the other nine / 3, 1), averaged over the ten
    ("yes", YES3, 0.9),
    ("no", YES3, 1.0),
    ("maybe", YES3, 0.0),
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
    ("yes", ["yes"] + ["no"] * 9, 0.3),
    ("left", ["left"] * 3 + ["right"] * 3 + ["center"] * 4, 0.9),
    ("", ["dog"] * 10, 0.0),
    ("yes, it is", ["yes"] * 10, 0.0),
]


@pytest.mark.parametrize("prediction,answers,want", VQA_CASES)
def test_vqav2_and_vizwiz_accuracy_agrees_with_the_official_evaluation(prediction, answers, want):
    assert vqa_accuracy(prediction, answers) == pytest.approx(want)


TEXTVQA_CASES = [
    ("1000 t-shirts", ["1,000 t-shirts"] * 10, 1.0),  # the two cases
    ("red white", ["red,white"] * 10, 0.0),
    ("red, white", ["red white"] * 10, 1.0),
    ("Coca Cola", ["coca-cola"] * 10, 1.0),
    ("STOP", ["stop"] * 10, 1.0),
    ("stop", ["STOP"] * 10, 1.0),
    ("the end", ["end"] * 10, 1.0),
    ("two", ["2"] * 10, 1.0),
    ("2", ["two"] * 10, 1.0),  # every human answer is normalised, agreeing or not (unlike VQAv2)
    ("mcdonald's", ["mcdonalds"] * 10, 0.0),
    ("mcdonald's", ["McDonald's"] * 10, 1.0),
    ("what?", ["what"] * 10, 1.0),
    ("1,000", ["1000"] * 10, 1.0),
    ("1.000", ["1000"] * 10, 0.0),
    ("$5", ["5"] * 10, 0.0),
    ("5", ["$5"] * 5 + ["5"] * 5, 1.0),
    ("nokia", ["nokia"] * 3 + ["samsung"] * 7, 0.9),
    ("nokia", ["nokia"] * 2 + ["samsung"] * 8, 0.6),
    ("nokia", ["nokia"] + ["samsung"] * 9, 0.3),
    ("", ["a"] * 10, 1.0),  # the article is dropped from the answer: both sides are empty
    ("  Nokia  ", ["nokia"] * 10, 1.0),
    ("Nokia\n3310", ["nokia 3310"] * 10, 1.0),
    ("it's", ["its"] * 10, 0.0),
    ("its", ["it's"] * 10, 0.0),
    ("e-mail", ["email"] * 10, 0.0),
    ("e-mail", ["e mail"] * 10, 1.0),
    ("(555) 123-4567", ["555 123 4567"] * 10, 1.0),
    ("3:45", ["3:45"] * 10, 1.0),
    ("dont", ["don't"] * 10, 1.0),
    ("won't", ["wont"] * 10, 1.0),
    ("hello world!", ["hello world"] * 10, 1.0),
    ("hello-world", ["hello world"] * 10, 1.0),
    ("ten", ["10"] * 4 + ["ten dollars"] * 6, 1.0),
    ("ten dollars", ["10"] * 4 + ["ten dollars"] * 6, 1.0),
    ("dollars", ["10"] * 4 + ["ten dollars"] * 6, 0.0),
    ("a;b", ["a b"] * 10, 1.0),
    ("one way", ["1 way"] * 10, 1.0),
    ("#1", ["1"] * 10, 0.0),
    ("Nº 5", ["no 5"] * 10, 0.0),
    ("yes?", ["yes"] * 10, 1.0),
    ("2.", ["2"] * 10, 1.0),
    ("", ["nokia"] * 10, 0.0),
]


@pytest.mark.parametrize("prediction,answers,want", TEXTVQA_CASES)
def test_textvqa_accuracy_agrees_with_m4c(prediction, answers, want):
    assert textvqa_accuracy(prediction, answers) == pytest.approx(want)


GQA_CASES = [
    ("Yes.", "yes", True),
    ("yes", "yes", True),
    ("YES", "yes", True),
    ("No", "no", True),
    ("no.", "no", True),
    ("table.", "table", True),
    ("table..", "table", True),
    ("Right.", "right", True),
    ("Dark Blue.", "dark blue", True),
    ("dark blue", "dark blue", True),
    ("T-Shirt.", "t-shirt", True),
    ("t-shirt", "t-shirt", True),
    ("wood.", "wood", True),
    ("Bottom..", "bottom", True),
    ("bottom", "bottom", True),
    ("2", "2", True),
    ("2.", "2", True),
    ("2.5", "2.5", True),
    ("giraffe.", "giraffe", True),
    ("white", "white", True),
    # no other normalisation: articles, whitespace, punctuation and plurals count
    ("the table", "table", False),
    (" table", "table", False),
    ("table ", "table", False),
    ("top\n", "top", False),
    ("tables", "table", False),
    ("Left side", "left", False),
    ("on the left", "left", False),
    ("dark-blue", "dark blue", False),
    ("t shirt", "t-shirt", False),
    ("man's", "man", False),
    ("yes, it is", "yes", False),
    ("Yes!", "yes", False),
    ("yes.", "no", False),
    ("two", "2", False),
    ("2.50", "2.5", False),
    ("Wooden", "wood", False),
    ("metal", "metallic", False),
    ("White and black", "white", False),
    ("Giraffes", "giraffe", False),
    ("", "no", False),
]


@pytest.mark.parametrize("prediction,answer,want", GQA_CASES)
def test_gqa_agrees_with_llava_conversion_and_the_official_exact_match(prediction, answer, want):
    assert gqa_correct(prediction, answer) is want


COLOURS = ["red", "blue", "green", "yellow"]
ANIMALS = ["cat", "dog", "bird"]
YES_NO = ["yes", "no"]
FRACTIONS = ["3/11", "8/11", "6/11", "3/5"]

CHOICE_CASES = [
    # a letter alone, leading, or stated
    ("B", COLOURS, "B"),
    ("B\n", COLOURS, "B"),
    ("(C)", COLOURS, "C"),
    ("A.", COLOURS, "A"),
    ("D)", COLOURS, "D"),
    ("B. blue", COLOURS, "B"),
    ("C: green", COLOURS, "C"),
    ("A. red is the colour", COLOURS, "A"),
    ("The answer is D.", COLOURS, "D"),
    ("The answer is A", COLOURS, "A"),  # stated: read, where VLMEvalKit's article guard would not
    ("The answer is (B) blue.", COLOURS, "B"),
    ("The answer is B because the sky is blue", COLOURS, "B"),
    ("Answer: B", COLOURS, "B"),
    ("Answer: (A)", COLOURS, "A"),
    ("The correct answer is **C**.", COLOURS, "C"),
    # VLMEvalKit's exact matching: one option letter standing as a word
    ("Option C", COLOURS, "C"),
    ("[D]", COLOURS, "D"),
    ("**A**", COLOURS, "A"),
    ("I pick D here", COLOURS, "D"),
    # letters beyond the options are never read, and stating one ends the reading
    ("E", COLOURS, None),
    ("(E)", COLOURS, None),
    ("The answer is E.", COLOURS, None),
    ("Option E is right", COLOURS, None),
    # lower-case letters are not option letters (VLMEvalKit reads none)
    ("b", COLOURS, None),
    ("c.", COLOURS, None),
    ("the answer is b", COLOURS, None),
    # articles are not letters
    ("The answer is a dog.", ANIMALS, "B"),
    ("A dog is on the mat.", ANIMALS, "B"),
    ("A cat sits next to a bird", ANIMALS, None),
    # two letters, or two options' texts: unreadable
    ("C and D are both wrong", COLOURS, None),
    ("B or C", COLOURS, None),
    ("It is yellow, not green.", COLOURS, None),
    # option text on word boundaries, case-insensitive
    ("I think it is green", COLOURS, "C"),
    ("Blue.", COLOURS, "B"),
    ("BLUE", COLOURS, "B"),
    ("yellow", COLOURS, "D"),
    ("reddish", COLOURS, None),
    ("I don't know", YES_NO, None),
    ("no", YES_NO, "B"),
    ("Yes, it is.", YES_NO, "A"),
    ("dark red", ["red", "dark red", "blue"], "B"),
    ("3/11", FRACTIONS, "A"),
    ("8/11", FRACTIONS, "B"),
    # nothing to read
    ("", COLOURS, None),
    ("   ", COLOURS, None),
    ("no idea", COLOURS, None),
    ("Cannot determine the answer", COLOURS, None),
]


@pytest.mark.parametrize("prediction,options,want", CHOICE_CASES)
def test_choice_reading(prediction, options, want):
    assert extract_choice(prediction, options) == want


# MMMU's eval_utils.py followed by hand: the response is lower-cased before the sentence split (so
# only line breaks split it); each part keeps its shortest tail after an indicator ("=" in the last);
# numbers by MMMU's three patterns; one-character golds padded with a space.
MMMU_OPEN_CASES = [
    ("The force is 5 N. So the total is 10.", "5", False),  # one sentence; key "10"
    ("x = 5", "x", False),  # key "5" after "="; " x" / "x " are not in it
    ("The answer is x^2", "x", False),  # padded gold against "x^2"
    ("The answer is x", "x", True),  # key "x" normalised to " x" / "x ", like the gold
    ("Roughly 12,5", "12", False),  # (?![,\d]) refuses 12; 5 is found
    ("The answer is 3.50", "3.5", True),
    ("So the total is 1,200 dollars.", "1200", True),  # 1,200 by the comma pattern
    ("Therefore the region is the cerebellum.", "cerebellum", True),
    ("It is 4", "5", False),
    ("The value is 3. So we get 4", "3", False),  # the ". S" split never fires after lower-casing
    ("The value is 3\nSo we get 4", "3", True),  # a line break does split
    ("y = 2x + 3\nso y = 5", "5", True),  # "=" only in the last part
    ("y = 5\nso it is 6", "5", False),  # ... not in an earlier part: the keys are "6" alone
    ("y = 5\nwhich we keep", "5", True),  # no key anywhere: the whole response, and its numbers
    ("The result is \nseven", "seven", False),  # "is " leaves "", "result " then gives "is"
    ("It is 3.43", ["24/7", "3.43"], True),  # a list of accepted answers
    ("The answer is 1000.", "1,000", True),
    ("about 2.5e3 units", "2500", True),  # scientific notation
    ("Paris", "paris", True),  # no key: the whole response
]


@pytest.mark.parametrize("response,gold,want", MMMU_OPEN_CASES)
def test_mmmu_open_answers_agree_with_mmmus_parser(response, gold, want):
    assert mmmu_open_correct(response, gold) is want
