"""The export adapter: both OUTPUT:result encodings, DataFrame input, every validation error, lenient mode."""

from __future__ import annotations

import csv
import re

import numpy as np
import pandas as pd
import pytest

from aggregation import ExportFormatError, generate_crowd, read_export
from aggregation.adapter import GROUPS_ONLY

COLUMNS = [
    "INPUT:images",
    "OUTPUT:result",
    "GOLDEN:result",
    "ASSIGNMENT:assignment_id",
    "ASSIGNMENT:worker_id",
]


def _write(path, rows, columns=COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    return path


GOOD = [
    ('"u1","u2","u3"', '{"group":1},{"group":2},{"group":1}', "", "a1", "w1"),
    ('"u2","u3"', '[{"group":5},{"group":5}]', "", "a2", "w2"),
    ('"u1","u3"', '[{"group":3,"image":"u1"},{"group":4,"image":"u3"}]', "", "a3", "w1"),
]


def test_reads_both_encodings_and_image_keys(tmp_path):
    reading = read_export(_write(tmp_path / "e.tsv", GOOD))
    assert reading.problems == []
    labels = reading.labels
    assert list(labels.columns) == ["task", "worker", "item", "label"]
    assert labels["item"].tolist() == ["u1", "u2", "u3", "u2", "u3", "u1", "u3"]
    assert labels["label"].tolist() == [1, 2, 1, 5, 5, 3, 4]
    assert labels["task"].tolist() == ["a1"] * 3 + ["a2"] * 2 + ["a3"] * 2
    assert labels["label"].dtype == np.int64


def test_image_key_overrides_position(tmp_path):
    rows = [('"u1","u2"', '[{"group":1,"image":"u2"},{"group":2,"image":"u1"}]', "", "a1", "w1")]
    labels = read_export(_write(tmp_path / "e.tsv", rows)).labels
    assert dict(zip(labels["item"], labels["label"], strict=True)) == {"u2": 1, "u1": 2}


def test_accepts_the_dataframe_that_pandas_reads(tmp_path):
    path = _write(tmp_path / "e.tsv", GOOD)
    frame = pd.read_csv(path, delimiter="\t")  # what get_assignments_df does (str cells, NaN for empty)
    assert read_export(frame).labels.equals(read_export(path).labels)


def test_task_id_then_suite_id_then_assignment_id(tmp_path):
    rows = [('"u1","u2"', '{"group":1},{"group":1}', "a1", "w1", "s9", "t5")]
    columns = ["INPUT:images", "OUTPUT:result", "ASSIGNMENT:assignment_id", "ASSIGNMENT:worker_id"]
    suite = [*columns, "ASSIGNMENT:task_suite_id"]
    labels = read_export(_write(tmp_path / "s.tsv", [r[:5] for r in rows], suite)).labels
    assert set(labels["task"]) == {"s9"}
    labels = read_export(_write(tmp_path / "t.tsv", rows, [*suite, "ASSIGNMENT:task_id"])).labels
    assert set(labels["task"]) == {"t5"}


def test_synthetic_export_round_trip(tmp_path):
    crowd = generate_crowd(n_items=30, n_classes=4, seed=2, result_encoding="mixed")
    crowd.write_export(tmp_path / "e.tsv")
    labels = read_export(tmp_path / "e.tsv").labels
    pd.testing.assert_frame_equal(labels, crowd.labels, check_dtype=False)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            ('"u1","u2"', '{"group":1}', "", "a7", "w1"),
            "OUTPUT:result has 1 groups but INPUT:images has 2 images",
        ),
        (
            ('"u1","u2"', '{"group":1},{"group":"x"}', "", "a7", "w1"),
            "OUTPUT:result element 2 has a non-integer group",
        ),
        (
            ('"u1","u2"', '{"group":1},{"group":1.5}', "", "a7", "w1"),
            "OUTPUT:result element 2 has a non-integer group: {'group': 1.5}",
        ),
        (
            ('"u1","u2"', '{"group":1},{"group":99999999999999999999}', "", "a7", "w1"),
            "OUTPUT:result element 2 has a group beyond 64-bit integers",
        ),
        (('"u1","u2"', "", "", "a7", "w1"), "empty cell in OUTPUT:result"),
        (("", '{"group":1}', "", "a7", "w1"), "empty cell in INPUT:images"),
        (('"u1","u2"', '{"group":1},{"group":2}', "", "a7", ""), "empty cell in ASSIGNMENT:worker_id"),
        (('"u1","u1"', '{"group":1},{"group":2}', "", "a7", "w1"), "item u1 appears twice in one assignment"),
        (('"u1",u2', '{"group":1},{"group":2}', "", "a7", "w1"), "INPUT:images is not valid JSON"),
        (
            ('"u1","u2', '{"group":1},{"group":2}', "", "a7", "w1"),
            "INPUT:images is not valid JSON (Unterminated string starting at char 6)",
        ),
        (
            ('"u1","u2"', '{"group":1},{"group":2}', "", "", "w1"),
            "!row 2: empty cell in ASSIGNMENT:assignment_id",
        ),
    ],
)
def test_each_bad_row_is_named(tmp_path, row, message):
    """Strict mode names the data row (1-based, header excluded) and the assignment; lenient skips it."""
    expected = message[1:] if message.startswith("!") else "row 2 (assignment a7): " + message
    path = _write(tmp_path / "e.tsv", [GOOD[0], row])
    with pytest.raises(ExportFormatError, match="^" + re.escape(expected)):
        read_export(path)
    lenient = read_export(path, strict=False)
    assert lenient.labels["task"].tolist() == ["a1"] * 3
    assert len(lenient.problems) == 1 and lenient.problems[0].startswith(expected)


def test_plain_group_cells_read_as_json_would(tmp_path):
    """Cells of nothing but {"group": n} objects are read without JSON: spacing, brackets or not,
    "-0", 18 digits; an assignment over two rows with other images is still one assignment. A
    second key, 19 digits or a string group go through JSON and give the same labels."""
    big = 10**17 + 3
    plain = [
        ('"u1","u2","u3"', '[ {"group": 1} , {"group" : -2},{"group":-0} ]', "", "a1", "w1"),
        ('"u1","u2"', f'{{"group":{big}}},\n{{"group":7}}', "", "a2", "w2"),
        ('"u4"', '{"group":3}', "", "a1", "w1"),
    ]
    assert all(GROUPS_ONLY.fullmatch(cell) for _, cell, *_ in plain)
    labels = read_export(_write(tmp_path / "p.tsv", plain)).labels
    assert labels["label"].tolist() == [1, -2, 0, big, 7, 3]
    assert labels["item"].tolist() == ["u1", "u2", "u3", "u1", "u2", "u4"]
    assert labels["label"].dtype == np.int64
    mixed = [*plain[:2], ('"u4"', '[{"group":"3","image":"u4"}]', "", "a1", "w1")]
    assert not GROUPS_ONLY.fullmatch(mixed[2][1]) and not GROUPS_ONLY.fullmatch(
        '{"group":1000000000000000000}'
    )
    assert read_export(_write(tmp_path / "j.tsv", mixed)).labels.equals(labels)


def test_item_twice_across_rows_of_one_assignment(tmp_path):
    rows = [
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a1", "w1"),
        ('"u2","u3"', '{"group":1},{"group":2}', "", "a1", "w1"),
    ]
    with pytest.raises(ExportFormatError, match=r"^row 2 \(assignment a1\): item u2 appears twice"):
        read_export(_write(tmp_path / "e.tsv", rows))


def test_missing_column(tmp_path):
    path = _write(tmp_path / "e.tsv", [r[:4] for r in GOOD], COLUMNS[:4])
    with pytest.raises(ExportFormatError, match=r"lacks column.*ASSIGNMENT:worker_id"):
        read_export(path)


def test_comma_separated_export_is_named_as_such(tmp_path):
    """A CSV read as a TSV is one column named by the whole header: say the separator is wrong."""
    path = tmp_path / "e.csv"
    pd.DataFrame(GOOD, columns=COLUMNS).to_csv(path, index=False)
    with pytest.raises(
        ExportFormatError, match=r"lacks column.*looks comma-separated.*must be tab-separated"
    ):
        read_export(path)
    tsv = _write(tmp_path / "e.tsv", [r[:4] for r in GOOD], COLUMNS[:4])
    with pytest.raises(ExportFormatError) as missing_one:
        read_export(tsv)
    assert "comma" not in str(missing_one.value)


def test_empty_inputs(tmp_path):
    with pytest.raises(ExportFormatError, match="no rows"):
        read_export(_write(tmp_path / "e.tsv", []))
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ExportFormatError, match="empty"):
        read_export(tmp_path / "empty.tsv")
    with pytest.raises(ExportFormatError, match="not found"):
        read_export(tmp_path / "missing.tsv")
    with pytest.raises(ExportFormatError, match="no usable rows"):
        read_export(_write(tmp_path / "bad.tsv", [('"u1"', "", "", "a1", "w1")]), strict=False)


def test_error_is_a_value_error():
    assert issubclass(ExportFormatError, ValueError)
