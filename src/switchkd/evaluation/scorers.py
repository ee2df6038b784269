"""Model-free scorers for the paper's benchmarks; each takes plain strings and agrees, case for case,
with the official code of its benchmark as LLaVA-1.5's evaluation reaches it (docs/evaluation.md).

- VQAv2 / VizWiz: the prediction goes through LLaVA's submission step (m4c's ``EvalAIAnswerProcessor``),
  then the official ``vqaEval.py`` after its 2021 fix: when the human answers disagree, both they and
  the prediction get punctuation, number-word, article and contraction normalisation; when they agree,
  none. Accuracy is ``min(#matching humans / 3, 1)`` averaged over the leave-one-out subsets.
- TextVQA: m4c's ``TextVQAAccuracyEvaluator``: the EvalAI processor on the prediction and every answer.
- GQA: LLaVA's conversion (trailing periods stripped, lower case), then the official exact match.
- Multiple choice (ScienceQA, MMMU, MMBench): VLMEvalKit's exact matching, with explicit answer
  phrasings read first and option text matched on word boundaries (``extract_choice``).
"""

from __future__ import annotations

import re
from collections import defaultdict

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """``vqaEval.py``'s normalisation (whitespace, punctuation, number words, articles, contractions)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def evalai_answer(text: str) -> str:
    """m4c's ``EvalAIAnswerProcessor``: lower case, every "," and "?" deleted, "'s" -> " 's", then the
    same normalisation as ``normalize_answer``. LLaVA's VQAv2/VizWiz submissions and TextVQA use it."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def _leave_one_out(prediction: str, answers: list[str]) -> float:
    scores = [
        min(1.0, sum(1 for j, g in enumerate(answers) if j != i and g == prediction) / 3) for i in range(len(answers))
    ]
    return sum(scores) / len(scores)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 / VizWiz accuracy of one raw prediction against the (usually ten) human answers."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = evalai_answer(prediction)  # LLaVA's convert_*_for_submission.py
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:  # vqaEval.py: normalise only when the humans disagree
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    return _leave_one_out(pred, gts)


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """TextVQA accuracy (m4c): the EvalAI processor on the prediction and on every human answer."""
    if not answers:
        raise ValueError("textvqa_accuracy needs at least one human answer")
    return _leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in answers])


def gqa_correct(prediction: str, answer: str) -> bool:
    """GQA: LLaVA's ``convert_gqa_for_eval.py`` (trailing periods stripped, lower case), then the
    official ``eval.py``'s exact comparison with the gold answer."""
    return prediction.rstrip(".").lower() == answer


def exact_match(prediction: str, answer: str) -> bool:
    """Exact match after ``normalize_answer`` on both sides (the built-in world's short answers)."""
    return normalize_answer(prediction) == normalize_answer(answer)


# ---- multiple choice -------------------------------------------------------------------------------

_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_LONE_LETTER = re.compile(r"\(?([A-Z])\)?[.:)]?")
_LEADING_LETTER = re.compile(r"\(?([A-Z])[.:)]\s")
_STATED_LETTER = re.compile(r"\banswer(?:\s+is|\s*:)\s*[(*\[]*([A-Z])[)*\]]*(?=[\s.,;:!]|$)", re.IGNORECASE)


def extract_choice(prediction: str, options: list[str]) -> str | None:
    """The option letter an answer chooses, or None when it cannot be read.

    In order: an answer that is only a letter (``B``, ``(B)``, ``B.``), starts with one (``B. dog``) or
    states one (``The answer is B``, ``Answer: (B)``); then VLMEvalKit's exact matching: separators
    ``.()[],:;!*#{}`` become spaces and exactly one option letter must stand as a word (with its
    guard: a standing ``A`` among more than three words may be the article, so no letter is read);
    then the option whose text stands in the answer as whole words (case-insensitive; an option whose
    text lies inside another matched option's text yields to it). Letters are upper-case; a letter
    beyond the options is never read, and stating one ends the reading.
    """
    letters = [chr(ord("A") + i) for i in range(len(options))]
    text = prediction.strip()
    if not text or any(refusal in text for refusal in _REFUSALS):
        return None
    for match in (_LONE_LETTER.fullmatch(text), _LEADING_LETTER.match(text + " ")):
        if match:
            return match.group(1) if match.group(1) in letters else None
    stated = _STATED_LETTER.search(text)
    if stated and stated.group(1).isupper():
        return stated.group(1) if stated.group(1) in letters else None
    words = text.translate(_SEPARATORS).split()
    standing = [letter for letter in letters if letter in words]
    if len(standing) == 1 and not ("A" in words and len(words) > 3):
        return standing[0]
    return _choice_by_text(text, options, letters)


def _choice_by_text(text: str, options: list[str], letters: list[str]) -> str | None:
    lowered = text.lower()
    found = {
        letter: opt.strip().lower()
        for letter, opt in zip(letters, options)
        if opt.strip() and re.search(rf"(?<!\w){re.escape(opt.strip().lower())}(?!\w)", lowered)
    }
    kept = [k for k, v in found.items() if not any(v != w and v in w for w in found.values())]
    return kept[0] if len(kept) == 1 else None


def multiple_choice_accuracy(predictions: list[str], options: list[list[str]], answers: list[str]) -> float:
    """ScienceQA / MMMU multiple choice: unreadable answers count as wrong (no random guess)."""
    correct = [extract_choice(p, o) == a for p, o, a in zip(predictions, options, answers)]
    return sum(correct) / max(len(correct), 1)


def circular_accuracy(results: dict[str, list[bool]]) -> float:
    """MMBench circular evaluation: a question counts only if every rotation of its options is right."""
    if not results:
        return 0.0
    return sum(all(r) for r in results.values()) / len(results)


# ---- MMMU open questions -----------------------------------------------------------------------------
# MMMU's eval_utils.py, rule for rule: the response is stripped of spaces and periods and lower-cased
# *before* it is split into sentences, so the split on ". " followed by a capital never fires and only
# line breaks separate sub-responses; each sub-response keeps its shortest tail after an indicator
# ("=" too, in the last one); one-character gold strings are padded with a space on either side.

_OPEN_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands commas
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))  # float() as MMMU calls it: "1_000", "inf" and "nan" count
    except ValueError:
        return None


def normalize_open(text: str) -> list:
    """MMMU's ``normalize_str``: a number rounded to 2 decimals, else the lower-cased string (one
    character padded, ``[" x", "x "]``, so a gold ``x`` does not match every word with an x)."""
    text = text.strip()
    number = _as_number(text)
    if number is not None:
        return [round(number, 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, part in enumerate(parts):
        indicators = _OPEN_INDICATORS + (("=",) if index == len(parts) - 1 else ())
        shortest = ""
        for tail in (part.split(ind)[-1].strip() for ind in indicators if ind in part):
            if not shortest or len(tail) < len(shortest):  # an empty tail is replaced by the next one
                shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """MMMU's ``parse_open_response``: the key sub-responses, every number in them, each normalised."""
    keys = _key_responses(response)
    found = keys + [n for key in keys for pattern in _NUMBER_PATTERNS for n in pattern.findall(key)]
    return list(dict.fromkeys(x for item in found for x in normalize_open(item)))


def mmmu_open_correct(response: str, answers: str | list[str]) -> bool:
    """MMMU's ``eval_open``: a parsed number must equal a gold number; a parsed string must contain a
    gold string. ``answers`` is one gold answer or a list of accepted ones."""
    golds = [g for a in (answers if isinstance(answers, list) else [answers]) for g in normalize_open(str(a))]
    for pred in parse_open_response(response):
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# ---- MME ---------------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def yes_no(prediction: str) -> str:
    """MME's reading of an answer: yes, no, or other (from the first four characters)."""
    text = prediction.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(rows: list[dict]) -> dict:
    """``rows``: {subtask, image, prediction, answer}. Per subtask: acc and acc+ (both questions of an
    image right), score = 100 (acc + acc+); perception and cognition totals."""
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_task[r["subtask"]][r["image"]].append(yes_no(r["prediction"]) == r["answer"].strip().lower())
    out: dict = {"subtasks": {}}
    for task, images in sorted(by_task.items()):
        flat = [c for cs in images.values() for c in cs]
        acc = sum(flat) / len(flat)
        acc_plus = sum(all(cs) for cs in images.values()) / len(images)
        out["subtasks"][task] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus)}
    scores = {t: v["score"] for t, v in out["subtasks"].items()}
    out["perception"] = sum(scores.get(t, 0.0) for t in MME_PERCEPTION)
    out["cognition"] = sum(scores.get(t, 0.0) for t in MME_COGNITION)
    return out


# ---- POPE --------------------------------------------------------------------------------------------


def pope_answer(prediction: str) -> tuple[str, bool]:
    """LLaVA's POPE reading: first sentence; any "no"/"not" is no, everything else yes. Returns the
    answer and whether it was clear (a yes or no word present)."""
    text = prediction.strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no", True
    clear = any(w.lower().strip("!?") in ("yes", "yeah") for w in words)
    return "yes", clear


def pope_metrics(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio; ``unclear`` counts answers with
    neither yes nor no, which the standard rule reads as yes."""
    if len(predictions) != len(labels):
        raise ValueError("pope_metrics: predictions and labels differ in length")
    read = [pope_answer(p) for p in predictions]
    pred = [a for a, _ in read]
    gold = [lab.strip().lower() for lab in labels]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(pred, gold))
    tn = sum(p == "no" and g == "no" for p, g in zip(pred, gold))
    fn = sum(p == "no" and g == "yes" for p, g in zip(pred, gold))
    n = max(len(pred), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": pred.count("yes") / n,
        "unclear": sum(not c for _, c in read),
        "n": len(pred),
    }
