"""The record reader scans a JSON list once (each record's own text kept) and the store gives back
exactly what json.loads would."""

import json

import pytest

from switchkd.data.records import RecordError, RecordStore, _read_text, _spans, load_records

RECORDS = [
    {"id": "a", "image": "x/1.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}]},
    {"id": 2, "conversations": [{"from": "gpt", "value": 'caf\u00e9 \u6f22\u5b57 "quoted" \\\\ back\nslash'}]},
    [1, 2, {"nested": [[], {}]}],
    "a string record",
    {"id": "e", "image": "", "conversations": "not a list"},
]


@pytest.mark.parametrize("layout", ["compact", "indented", "jsonl", "spaced"])
def test_the_store_returns_exactly_what_json_loads_reads(tmp_path, layout):
    if layout == "jsonl":
        path = tmp_path / "r.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    else:
        path = tmp_path / "r.json"
        text = {
            "compact": json.dumps(RECORDS, separators=(",", ":")),
            "indented": json.dumps(RECORDS, indent=2),
            "spaced": " \n [ " + " ,\n\t".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + " ] \n",
        }
        path.write_text(text[layout], encoding="utf-8")
    store = RecordStore.load(path)
    assert len(store) == len(RECORDS) and [store[i] for i in range(len(store))] == RECORDS
    assert store[-1] == RECORDS[-1] and load_records(path) == RECORDS
    path, text = _read_text(path)
    spans = list(_spans(path, text))
    assert [json.loads(text[a:b]) for a, b, _ in spans] == RECORDS  # each span is its record's own text
    assert store.sizes.tolist() == [len(text[a:b].encode()) for a, b, _ in spans]
    assert store.has_image.tolist() == [True, False, False, False, False]
    with pytest.raises(IndexError):
        store[len(RECORDS)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"id": 1},]', "line 1 column 12: Expecting value"),
        ('[{"id": 1} {"id": 2}]', "line 1 column 12: Expecting ',' delimiter"),
        ('[{"id": 1}]\n[]', "line 2 column 1: Extra data"),
        ('[{"id": 1}', "line 1 column 11: Expecting ',' delimiter"),
        ('{"id": 1}', "expected a JSON list of records, got dict"),
        ("", "malformed JSON at line 1 column 1"),
    ],
)
def test_malformed_lists_name_line_and_column(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(RecordError, match=message):
        RecordStore.load(path)


@pytest.mark.parametrize("text", ["[]", "  [ \n ]  \n"])
def test_empty_lists_give_an_empty_store(tmp_path, text):
    path = tmp_path / "empty.json"
    path.write_text(text)
    assert len(RecordStore.load(path)) == 0


def test_non_ascii_files_and_crlf_lines_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(("\r\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + "\r\n").encode())
    store = RecordStore.load(path)
    assert [store[i] for i in range(len(store))] == RECORDS
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n\n{"id": \n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: malformed JSON"):
        RecordStore.load(bad)


def test_a_store_from_python_records_round_trips():
    store = RecordStore.from_records(RECORDS)
    assert [store[i] for i in range(len(store))] == RECORDS
