"""The export adapter: both OUTPUT:result encodings, DataFrame input, every validation error, lenient mode."""

from __future__ import annotations

import csv
import gzip
import json
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
    # No task id column: each row shows other images, so each is a HIT of its own.
    assert labels.groupby("task", sort=False).size().tolist() == [3, 2, 2]
    assert reading.notes == [
        "the export has no task id (ASSIGNMENT:task_id or ASSIGNMENT:task_suite_id): answers that show "
        "the same images (INPUT:images) are read as answers to one HIT"
    ]
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


def test_tasks_of_one_image_are_read_as_their_suite(tmp_path):
    """Ten tasks of one image per suite: each suite is a HIT, each worker's answer to it one grouping.

    Read by task id, no answer held two images and the command stopped for want of pairwise labels.
    Without the suite id there is no telling which tasks a worker answered together: a clear error.
    """
    columns = ["INPUT:images", "OUTPUT:result", "ASSIGNMENT:assignment_id", "ASSIGNMENT:worker_id"]
    groups = {"u1": 1, "u2": 1, "u3": 2}
    rows = [
        (f'"{image}"', f'{{"group":{group}}}', f"s1--{worker}", worker, "s1", f"s1-t{k}")
        for worker in ("w1", "w2")
        for k, (image, group) in enumerate(groups.items())
    ]
    reading = read_export(
        _write(tmp_path / "t.tsv", rows, [*columns, "ASSIGNMENT:task_suite_id", "ASSIGNMENT:task_id"])
    )
    assert set(reading.labels["task"]) == {"s1"}
    assert reading.labels.groupby("worker")["item"].apply(list).to_dict() == {
        "w1": ["u1", "u2", "u3"],
        "w2": ["u1", "u2", "u3"],
    }
    assert reading.notes == [
        "every task shows one image (INPUT:images), so the tasks of one suite are read as one HIT "
        "(ASSIGNMENT:task_suite_id): an assignment is a worker's answer to its suite"
    ]
    no_suite = _write(tmp_path / "n.tsv", [(*r[:4], r[5]) for r in rows], [*columns, "ASSIGNMENT:task_id"])
    with pytest.raises(
        ExportFormatError, match=r"^every task shows one image .* no ASSIGNMENT:task_suite_id"
    ):
        read_export(no_suite)


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
            "OUTPUT:result has 1 group but INPUT:images has 2 images",
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
        # Another shape than the grouping read as "1 groups but INPUT:images has 2 images".
        (
            ('"u1","u2"', '{"groups":[["u1"],["u2"]]}', "", "a7", "w1"),
            'OUTPUT:result holds a JSON object with key "groups", where one {"group": n} object per '
            "image of INPUT:images was expected (2 images here)",
        ),
        (
            ('"u1","u2"', '{"u1":1,"u2":2}', "", "a7", "w1"),
            'OUTPUT:result holds a JSON object with keys "u1", "u2", where one {"group": n} object',
        ),
        (('"u1","u2"', '[["u1"],["u2"]]', "", "a7", "w1"), "OUTPUT:result holds 2 JSON arrays, where one"),
        (
            ('"u1","u2"', '{"label":1},{"label":2}', "", "a7", "w1"),
            'OUTPUT:result holds 2 JSON objects with key "label", where one',
        ),
        (("", '{"group":1}', "", "a7", "w1"), "empty cell in INPUT:images"),
        (('"u1","u2"', '{"group":1},{"group":2}', "", "a7", ""), "empty cell in ASSIGNMENT:worker_id"),
        (('"u1","u1"', '{"group":1},{"group":2}', "", "a7", "w1"), "item u1 appears twice in one assignment"),
        (('"u1",u2', '{"group":1},{"group":2}', "", "a7", "w1"), "INPUT:images is not valid JSON"),
        (
            ('"u1","u2', '{"group":1},{"group":2}', "", "a7", "w1"),
            "INPUT:images is not valid JSON (Unterminated string starting at char 6)",
        ),
        (
            ('"u1","u2"', '{"group":1},{"group":2}', "", "", "w1", ""),
            "!row 2: empty cell in ASSIGNMENT:task_suite_id",
        ),
        (
            ('"u1","u2"', '{"group":1},{"group":2,"image":"u9"}', "", "a7", "w1"),
            "OUTPUT:result element 2 names image u9, which the row's INPUT:images does not show",
        ),
        (
            ('"u1"," "', '{"group":1},{"group":2}', "", "a7", "w1"),
            "INPUT:images element 2 is not a non-empty",
        ),
    ],
)
def test_each_bad_row_is_named(tmp_path, row, message):
    """Strict mode names the data row (1-based, header excluded) and the assignment; lenient skips it."""
    expected = message[1:] if message.startswith("!") else "row 2 (assignment a7): " + message
    suites = [(*GOOD[0], "s1"), row if len(row) == 6 else (*row, "s2")]
    path = _write(tmp_path / "e.tsv", suites, [*COLUMNS, "ASSIGNMENT:task_suite_id"])
    with pytest.raises(ExportFormatError, match="^" + re.escape(expected)):
        read_export(path)
    lenient = read_export(path, strict=False)
    assert lenient.labels["task"].tolist() == ["s1"] * 3
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


def test_an_image_an_answer_names_must_be_one_its_row_shows(tmp_path):
    """An `image` key naming an image outside the row's INPUT:images stops the reading, naming the row,
    the assignment and the image; before, it was clustered as one more item (`items 83` of 82)."""
    rows = [
        ('"u1","u2","u3"', '[{"group":1},{"group":1},{"group":2}]', "", "a1", "w1"),
        ('"u1","u2","u3"', '[{"group":1},{"group":1},{"group":2,"image":"NOT_IN_HIT"}]', "", "a2", "w2"),
    ]
    path = _write(tmp_path / "e.tsv", rows)
    with pytest.raises(ExportFormatError, match=r"^row 2 \(assignment a2\): .* names image NOT_IN_HIT"):
        read_export(path)
    lenient = read_export(path, strict=False)
    assert set(lenient.labels["item"]) == {"u1", "u2", "u3"} and len(lenient.problems) == 1


def test_image_names_are_stripped_of_surrounding_whitespace(tmp_path):
    """` u1` (a space pasted before a URL) is the image u1, in INPUT:images as in an `image` key,
    on the fast path and the row-by-row one; before, it was a second item."""
    rows = [
        ('" u1","u2","u3"', '{"group":1},{"group":1},{"group":2}', "", "a1", "w1"),
        ('"u1","u2 ","u3"', '{"group":1},{"group":2},{"group":2}', "", "a2", "w2"),
    ]
    fast = read_export(_write(tmp_path / "f.tsv", rows)).labels
    assert fast["item"].tolist() == ["u1", "u2", "u3"] * 2
    keyed = [
        *rows,
        ('"u1","u2","u3"', '[{"group":1},{"group":"2","image":" u2"},{"group":2}]', "", "a3", "w3"),
    ]
    slow = read_export(_write(tmp_path / "s.tsv", keyed)).labels
    assert slow["item"].tolist() == ["u1", "u2", "u3"] * 3


def test_a_row_given_twice_is_named_as_a_repeat_of_its_first(tmp_path):
    """The same row pasted twice names the row it repeats, not an image shown twice."""
    rows = [
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a1", "w1", "s1"),
        ('"u1","u2"', '{"group":1},{"group":1}', "", "a2", "w2", "s1"),
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a1", "w1", "s1"),
    ]
    path = _write(tmp_path / "e.tsv", rows, [*COLUMNS, "ASSIGNMENT:task_suite_id"])
    with pytest.raises(ExportFormatError, match=r"^row 3 \(assignment a1\): repeats row 1: the same row"):
        read_export(path)
    lenient = read_export(path, strict=False)
    assert len(lenient.labels) == 4 and lenient.problems[0].startswith("row 3 (assignment a1): repeats row 1")


def test_item_twice_across_rows_of_one_assignment(tmp_path):
    rows = [
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a1", "w1", "s1"),
        ('"u2","u3"', '{"group":1},{"group":2}', "", "a1", "w1", "s1"),
    ]
    with pytest.raises(ExportFormatError, match=r"^row 2 \(assignment a1\): item u2 appears twice"):
        read_export(_write(tmp_path / "e.tsv", rows, [*COLUMNS, "ASSIGNMENT:task_suite_id"]))


def test_hits_are_told_apart_by_their_images_without_a_task_id(tmp_path):
    """toloka-kit's default export has no task id: each assignment was read as a HIT of its own, so
    a design of 3 answers per HIT read as 3 HITs of one answer (and the design advice followed)."""
    crowd = generate_crowd(n_items=40, n_classes=4, seed=3)
    crowd.write_export(tmp_path / "full.tsv")
    full = pd.read_csv(tmp_path / "full.tsv", sep="\t", dtype=str)
    bare = full.drop(
        columns=[c for c in full.columns if c in ("ASSIGNMENT:task_suite_id", "ASSIGNMENT:task_id")]
    )
    bare.to_csv(tmp_path / "bare.tsv", sep="\t", index=False)
    with_ids, without = read_export(tmp_path / "full.tsv").labels, read_export(tmp_path / "bare.tsv").labels
    assert (
        without["task"].nunique()
        == with_ids["task"].nunique()
        < without[["task", "worker"]].drop_duplicates().shape[0]
    )
    pairs = with_ids.assign(hit=without["task"].to_numpy())[["task", "hit"]].drop_duplicates()
    assert pairs["task"].is_unique and pairs["hit"].is_unique  # the same HITs, named otherwise


def test_a_worker_answering_a_hit_twice_is_named_as_such(tmp_path):
    rows = [
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a1", "w1"),
        ('"u1","u2"', '{"group":1},{"group":1}', "", "a2", "w1"),
    ]
    before = r"worker w1 answered the HIT of these images before, in assignment a1:"
    with pytest.raises(ExportFormatError, match=r"^row 2 \(assignment a2\): " + before):
        read_export(_write(tmp_path / "e.tsv", rows))


def test_a_task_id_that_names_two_hits_is_named_as_such(tmp_path):
    """Task ids restarted for a second batch (a colleague's HIT design): worker w1's answers to two
    HITs under one id, showing other images, were read as one grouping of both HITs' images, each
    group number of one answer matched with the other's, and nothing said so."""
    columns = [*COLUMNS, "ASSIGNMENT:task_id"]
    rows = [
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a1", "w1", "t1"),
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a2", "w2", "t1"),
        ('"v1","v2"', '{"group":1},{"group":1}', "", "a3", "w1", "t1"),  # batch 2, HIT "t1" again
        ('"v1","v2"', '{"group":1},{"group":1}', "", "a4", "w3", "t1"),
    ]
    path = _write(tmp_path / "e.tsv", rows, columns)
    with pytest.raises(ExportFormatError) as error:
        read_export(path)
    assert str(error.value).startswith(
        "row 3 (assignment a3): worker w1 answered ASSIGNMENT:task_id t1 before, in assignment a1, with "
        "other images: ASSIGNMENT:task_id names two HITs here"
    )
    assert "remove the ASSIGNMENT:task_id column to have HITs told apart by their images" in str(error.value)
    lenient = read_export(path, strict=False)
    assert len(lenient.problems) == 1 and lenient.problems[0].startswith("row 3 (assignment a3): ")
    assert set(lenient.labels["worker"]) == {"w1", "w2", "w3"} and len(lenient.labels) == 6
    # As advised: without the column, each HIT is told by its images, w1's two answers apart.
    bare = _write(tmp_path / "bare.tsv", [row[:-1] for row in rows], COLUMNS)
    labels = read_export(bare).labels
    assert labels.groupby(["task", "worker"]).size().tolist() == [2, 2, 2, 2]
    # One assignment of several tasks (rows) under one id each is one answer, as before.
    suite = [(*row[:3], "a1", "w1", "t1") for row in rows[::2]]
    assert len(read_export(_write(tmp_path / "s.tsv", suite, columns)).labels) == 4


def test_rejected_skipped_and_expired_assignments_are_left_out_and_rows_keep_their_numbers(tmp_path):
    """A web-UI export of every status has them; their groups were read as answers (a rejected
    spammer's random groups cost 0.02 of ARI in a user's try-out)."""
    columns = [*COLUMNS, "ASSIGNMENT:status"]
    rows = [
        ('"u1","u2"', '{"group":1},{"group":1}', "", "a1", "w1", "APPROVED"),
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a2", "w2", "REJECTED"),
        ('"u1","u2"', "", "", "a3", "w3", "EXPIRED"),
        ('"u1","u2"', '{"group":1},{"group":1}', "", "a4", "w4", "SUBMITTED"),
        ('"u1","u2"', '{"group":1}', "", "a5", "w5", "APPROVED"),
    ]
    reading = read_export(_write(tmp_path / "e.tsv", rows, columns), strict=False)
    assert sorted(reading.labels["worker"].unique()) == ["w1", "w4"]
    assert (
        reading.notes[0] == "left out 2 rows that are not answers (ASSIGNMENT:status: 1 expired, 1 rejected)"
    )
    assert reading.problems == [
        "row 5 (assignment a5): OUTPUT:result has 1 group but INPUT:images has 2 images"
    ]
    with pytest.raises(ExportFormatError, match=r"export has no answers: left out 1 rows"):
        read_export(_write(tmp_path / "r.tsv", rows[1:2], columns))


def test_images_only_rows_left_out_or_skipped_show_are_listed_as_unanswered(tmp_path):
    """u9 is shown only by a rejected answer, u8 only by a bad row: no label places them."""
    columns = [*COLUMNS, "ASSIGNMENT:status"]
    rows = [
        (*GOOD[0], "ACCEPTED"),
        ('"u9","u1"', '{"group":1},{"group":2}', "", "a8", "w3", "REJECTED"),
        ('"u8","u2"', "not json", "", "a9", "w4", "ACCEPTED"),
    ]
    path = _write(tmp_path / "e.tsv", rows, columns)
    assert read_export(_write(tmp_path / "r.tsv", rows[:2], columns)).unanswered == ["u9"]
    assert read_export(path, strict=False).unanswered == ["u8", "u9"]


def test_missing_column(tmp_path):
    path = _write(tmp_path / "e.tsv", [r[:4] for r in GOOD], COLUMNS[:4])
    with pytest.raises(ExportFormatError, match=r"lacks column.*ASSIGNMENT:worker_id"):
        read_export(path)


def test_a_file_of_crowdclust_or_another_projects_export_is_named_as_what_it_is(tmp_path):
    """A clusters.csv given in the export's place was told "the file looks comma-separated, but the
    export must be tab-separated", as if converting it would help; a truth file and the workers' table
    the same; the intruder pool's export (a run folder's other assignments file) only that it lacked
    OUTPUT:result; a web page saved in the export's place only that it lacked every column."""
    files = {
        "clusters.csv": ("item,cluster,confidence\nu1,0,1.000000\n", "it is a clusters file, as crowdclust "
                         "writes it (item,cluster,confidence), not a Toloka assignments export"),
        "truth.csv": ("item,class\nu1,a\n", "it is a truth file (item,class), not a Toloka assignments "
                      "export: give it with --truth"),
        "dataset.tsv": ("image\tclass\nu1\ta\n", "it is a dataset or truth file (image,class)"),
        "workers.csv": ("worker,answers,labels,informedness\nw1,1,1,1\n",
                        "it is the workers' table that crowdclust aggregate --workers-output writes"),
        "page.tsv": ("<!DOCTYPE html>\n<html><body>Sign in</body></html>\n",
                     "it is an HTML page (a web page saved in the export's place: a sign-in or error page?)"),
    }  # fmt: skip
    for name, (text, what) in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ExportFormatError) as error:
            read_export(tmp_path / name)
        assert str(error.value).startswith("export lacks column(s): INPUT:images, OUTPUT:result"), error.value
        assert f"; {what}" in str(error.value) and "tab-separated" not in str(error.value), error.value
    intruders = [(*row[:1], "2", *row[2:]) for row in GOOD]
    path = _write(tmp_path / "intruders.tsv", intruders, [*COLUMNS[:1], "OUTPUT:answer", *COLUMNS[2:]])
    with pytest.raises(ExportFormatError) as error:
        read_export(path)
    assert str(error.value) == (
        "export lacks column(s): OUTPUT:result; its answers are OUTPUT:answer, not OUTPUT:result: the "
        "export of another project (a run's intruder pool answers OUTPUT:answer)?"
    )


def test_two_exports_joined_into_one_file_are_named_so(tmp_path):
    """`cat day1.tsv day2.tsv > all.tsv` puts the second export's header line among the answers: it
    stopped the command with `row 4 (assignment ASSIGNMENT:assignment_id): INPUT:images is not valid
    JSON`, or, when the second export has other columns, as a row with a tab too many."""
    first = _write(tmp_path / "day1.tsv", GOOD[:2]).read_text()
    later = _write(tmp_path / "day2.tsv", [(*GOOD[2][:3], "a4", "w3")]).read_text()
    joined = tmp_path / "all.tsv"
    joined.write_text(first + "\ufeff" + later)  # the second file with its byte-order mark
    with pytest.raises(ExportFormatError) as error:
        read_export(joined)
    assert str(error.value).startswith(
        "row 3: a header line, not an answer: two exports joined into one file"
    )
    reading = read_export(joined, strict=False)  # lenient: the header line skipped, named as such
    assert reading.problems == [str(error.value)] and len(reading.labels) == 7
    wider = _write(tmp_path / "wide.tsv", [(*GOOD[2], "x")], [*COLUMNS, "ASSIGNMENT:reward"]).read_text()
    joined.write_text(first + wider)
    with pytest.raises(ExportFormatError) as error:
        read_export(joined)
    assert str(error.value).startswith(
        "row 3 (line 4) is a second header line, of 6 fields where the first has 5: two exports joined"
    ), error.value


def test_rows_of_empty_cells_between_answers_are_left_out_with_a_note(tmp_path):
    """A line of tabs between assignments (row delimiters) is a row whose every cell is empty: it
    stopped the command with `row 2: empty cell in INPUT:images`, though a blank line was skipped."""
    plain = read_export(_write(tmp_path / "plain.tsv", GOOD))
    rows = [GOOD[0], ("",) * len(COLUMNS), GOOD[1], ("",) * len(COLUMNS), GOOD[2]]
    reading = read_export(_write(tmp_path / "e.tsv", rows))
    pd.testing.assert_frame_equal(reading.labels, plain.labels)
    assert reading.notes[0] == "left out 2 rows with every cell empty"
    with pytest.raises(ExportFormatError, match=r"^row 3 \(assignment a2\): empty cell in OUTPUT:result$"):
        read_export(_write(tmp_path / "bad.tsv", [rows[0], rows[1], (GOOD[1][0], "", "", "a2", "w2")]))


def test_comma_separated_export_is_named_as_such(tmp_path):
    """A CSV read as a TSV is one column named by the whole header: say the separator is wrong."""
    path = tmp_path / "e.csv"
    pd.DataFrame(GOOD, columns=COLUMNS).to_csv(path, index=False)
    with pytest.raises(
        ExportFormatError, match=r"lacks column.*looks comma-separated.*must be tab-separated"
    ):
        read_export(path)
    # A spreadsheet where the decimal mark is a comma (most of Europe) separates its CSV by `;`: the
    # export was named only as lacking every column.
    pd.DataFrame(GOOD, columns=COLUMNS).to_csv(path, index=False, sep=";")
    with pytest.raises(
        ExportFormatError, match=r"lacks column.*looks semicolon-separated.*must be tab-separated"
    ):
        read_export(path)
    tsv = _write(tmp_path / "e.tsv", [r[:4] for r in GOOD], COLUMNS[:4])
    with pytest.raises(ExportFormatError) as missing_one:
        read_export(tsv)
    assert "comma" not in str(missing_one.value)


def test_a_json_file_is_named_as_json_whatever_its_layout(tmp_path):
    """Assignments saved as JSON (the API's objects, JSON lines) were named by their first line: as
    lacking every column (`[` alone on it), as comma-separated (one line), or as a row with more
    fields than the header (indented by tabs)."""
    answers = [dict(zip(COLUMNS, row, strict=True)) for row in GOOD]
    layouts = {
        "one-line.json": json.dumps(answers),
        "indented.json": json.dumps(answers, indent=2),
        "tabs.json": json.dumps(answers, indent="\t"),
        "lines.jsonl": "".join(json.dumps(answer) + "\n" for answer in answers),
        "bom.json": "\ufeff" + json.dumps(answers),
    }
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        start = "{" if name.endswith("jsonl") else "["
        with pytest.raises(ExportFormatError) as error:
            read_export(path)
        said = str(error.value)
        assert said.startswith(f"export file is JSON (it starts with `{start}`), not the tab-"), name
        assert "get_assignments_df" in said
    compressed = tmp_path / "answers.json.gz"
    compressed.write_bytes(gzip.compress(layouts["indented.json"].encode()))
    with pytest.raises(ExportFormatError, match=r"^export file is JSON \(it starts with `\[`\)"):
        read_export(compressed)


def test_empty_inputs(tmp_path):
    with pytest.raises(ExportFormatError, match="no rows"):
        read_export(_write(tmp_path / "e.tsv", []))
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ExportFormatError, match="empty"):
        read_export(tmp_path / "empty.tsv")
    with pytest.raises(ExportFormatError, match="no such file"):
        read_export(tmp_path / "missing.tsv")
    with pytest.raises(ExportFormatError, match="no usable rows"):
        read_export(_write(tmp_path / "bad.tsv", [('"u1"', "", "", "a1", "w1")]), strict=False)


def test_error_is_a_value_error():
    assert issubclass(ExportFormatError, ValueError)


def test_active_assignments_of_a_running_pool_are_left_out_not_a_bad_row(tmp_path):
    """An export of every status (the TSV's `status` takes ACTIVE too) taken while the pool runs has
    rows of assignments still in a worker's hands, with an empty OUTPUT:result: the command stopped
    on the first one ("empty cell in OUTPUT:result") as if the file were damaged."""
    columns = [*COLUMNS, "ASSIGNMENT:status"]
    rows = [
        ('"u1","u2"', '{"group":1},{"group":1}', "", "a1", "w1", "APPROVED"),
        ('"u1","u2"', "", "", "a2", "w2", "ACTIVE"),
        ('"u1","u2"', '{"group":1},{"group":1}', "", "a3", "w3", "SUBMITTED"),
        ('"u3","u4"', "", "", "a4", "w2", "ACTIVE"),
    ]
    reading = read_export(_write(tmp_path / "e.tsv", rows, columns))
    assert sorted(reading.labels["worker"].unique()) == ["w1", "w3"]
    assert reading.notes[0] == (
        "left out 2 rows that are not answers (ASSIGNMENT:status: 2 active); the active ones are still "
        "in workers' hands: export again once the pool has closed"
    )
    assert reading.unanswered == ["u3", "u4"]


def test_an_export_that_is_not_utf8_names_the_row_column_and_line(tmp_path):
    """pandas' message named a byte offset in its read buffer ("position 1" for a byte on row 3),
    not where the byte is or why: a Latin-1 save after an edit, or a spreadsheet's UTF-16."""
    rows = [(*GOOD[0][:3], "a1", "w1"), (*GOOD[1][:3], "a2", "w2"), (*GOOD[2][:3], "a3", "wé")]
    path = _write(tmp_path / "e.tsv", rows)
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(ExportFormatError) as latin:
        read_export(path)
    assert str(latin.value).startswith(
        "row 3 (line 4), ASSIGNMENT:worker_id: byte 0xe9 cannot be UTF-8 (Latin-1 or Windows-1252, perhaps)"
    )
    assert "iconv -f WINDOWS-1252 -t UTF-8" in str(latin.value)
    path.write_bytes(path.read_text(encoding="latin-1").encode("utf-16"))
    with pytest.raises(ExportFormatError, match=r"^export file is not UTF-8 text: it looks like UTF-16"):
        read_export(path)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_named_utf16_not_cut_short_or_lacking_columns(tmp_path, encoding):
    """UTF-16 without a byte-order mark (`iconv -t UTF-16LE`) decodes as UTF-8, a NUL beside each
    letter: little-endian read as "cut short" (its last byte a NUL after the last line end),
    big-endian as "lacks column(s): INPUT:images, ...", advice about a killed run or the columns."""
    path = _write(tmp_path / "e.tsv", [(*row[:3], f"a{k}", "w1") for k, row in enumerate(GOOD)])
    path.write_bytes(path.read_text(encoding="utf-8").encode(encoding))
    with pytest.raises(ExportFormatError) as error:
        read_export(path)
    assert str(error.value).startswith("export file is not UTF-8 text: it looks like UTF-16"), error.value
    assert "iconv -f UTF-16 -t UTF-8" in str(error.value)


def test_a_workbook_or_binary_file_is_named_so_not_as_utf16_or_a_zip_to_rename(tmp_path):
    """An export opened in a spreadsheet and saved in its format, or any binary file given by mistake,
    was misnamed: an .xlsx (a zip of XML) "is zip-compressed, but its name does not end in .zip:
    rename it e.xlsx.zip", an .xls or an image "looks like UTF-16 ... iconv -f UTF-16", advice that
    cannot help. UTF-16 text (a spreadsheet's 'Unicode Text') is still named as such."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    files = {
        "e.xlsx": (buffer.getvalue(), "it is an Excel workbook (.xlsx), not tab-separated text"),
        "e.xls": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "it is an Excel 97-2003 workbook (.xls)"),
        "e.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "it holds binary data (NUL bytes)"),
    }
    for name, (data, why) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ExportFormatError) as error:
            read_export(tmp_path / name)
        assert str(error.value).startswith(f"export file is not text: {why}"), str(error.value)
        assert "UTF-16" not in str(error.value) and "rename" not in str(error.value)
    text = _write(tmp_path / "e.tsv", [(*GOOD[0][:3], "a1", "w1")]).read_text()
    (tmp_path / "wide.tsv").write_bytes(text.encode("utf-16"))
    with pytest.raises(ExportFormatError, match=r"^export file is not UTF-8 text: it looks like UTF-16"):
        read_export(tmp_path / "wide.tsv")


def test_a_row_with_more_fields_than_the_header_is_named_by_row_and_line(tmp_path):
    """pandas' "Expected 5 fields in line 4, saw 7" counted a quoted cell of two lines as one line
    and blank lines as lines: neither the reader's row nor the editor's line. The row is counted as
    every other message counts it, and the line as an editor shows it."""
    rows = [
        ('"u1","u2"', '{"group":1},{"group":1}', "a\nhint over two lines", "a1", "w1"),
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a2", "w2"),
        ('"u1","u2"', '{"group":1},{"group":2}', "", "a3", "w3", "pasted", "twice"),
    ]
    path = _write(tmp_path / "e.tsv", rows)
    text = path.read_text().split("\n")
    path.write_text("\n".join([*text[:3], "", *text[3:]]))  # a blank line after the first row
    with pytest.raises(ExportFormatError) as error:
        read_export(path)
    assert str(error.value).startswith(
        "row 3 (line 6) has 7 fields where the header has 5: a tab inside a cell that is not quoted"
    )


def test_columns_in_another_case_are_named_as_such(tmp_path):
    """`input:images` and `Output:Result` were "missing" (`export lacks column(s): INPUT:images,
    OUTPUT:result`) though the header had them; Toloka never writes them so, so they are refused,
    naming each one and what Toloka calls it. An optional column in another case was not read at all:
    `assignment:status` let a rejected answer count."""
    columns = ["input:images", " Output:Result", *COLUMNS[2:]]
    with pytest.raises(ExportFormatError) as error:
        read_export(_write(tmp_path / "e.tsv", GOOD, columns))
    assert str(error.value) == (
        "export names column(s) otherwise than Toloka does: `input:images` for INPUT:images, "
        "` Output:Result` for OUTPUT:result: rename them in the header line as Toloka writes them, "
        "capitals and all (a field's name is case-sensitive in Toloka)"
    )
    rows = [(*GOOD[0], "ACCEPTED"), ('"u1","u2"', '{"group":1},{"group":2}', "", "a8", "w3", "REJECTED")]
    status = _write(tmp_path / "s.tsv", rows, [*COLUMNS, "assignment:status"])
    with pytest.raises(ExportFormatError, match="`assignment:status` for ASSIGNMENT:status: rename"):
        read_export(status)
    # A column missing outright is still named as missing, beside the misspelt one.
    lacking = _write(tmp_path / "w.tsv", [r[:4] for r in GOOD], ["input:images", *COLUMNS[1:4]])
    with pytest.raises(ExportFormatError, match=r"\); it also lacks column\(s\): ASSIGNMENT:worker_id$"):
        read_export(lacking)
