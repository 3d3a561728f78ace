"""`crowdclust aggregate` as a user runs it, on generated exports.

Most cases run the command in this process (Typer's runner: its exit code, standard output and
standard error, warnings shown as a fresh process shows them): a process of its own costs about a
CPU-second of imports (pandas, numba's kernels) before the fit, and these cases check what the
command says and writes, which does not depend on the process. A real process where that is the
point: the same output under other hash seeds and thread counts, and what the command imports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aggregation import clustering_scores, crowd_shape, generate_crowd
from tests.fixtures.cli import Done, invoke

CLI = [sys.executable, "-m", "crowdclust.cli", "aggregate"]
ROOT = Path(__file__).resolve().parents[1]


def _process(args, hashseed: str, threads: int | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, with PYTHONHASHSEED (and NUMBA_NUM_THREADS) set."""
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def _run(args) -> Done:
    """The command in this process (`tests.fixtures.cli.invoke`)."""
    return invoke("aggregate", *map(str, args))


def ari_of(stdout: str) -> float:
    return float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("ari")))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    crowd = generate_crowd(82, 8, seed=11, result_encoding="mixed")
    crowd.write_export(folder / "export.tsv")
    crowd.write_truth(folder / "truth.csv")
    return folder


def test_end_to_end_with_truth_and_same_output_across_hash_seeds(export):
    first = _process(
        [export / "export.tsv", "-o", export / "a.csv", "--truth", export / "truth.csv", "--seed", "3"], "1"
    )
    assert first.returncode == 0, first.stderr
    for word in ("items", "workers", "labels", "clusters", "seconds", "ari", "bcubed_f1"):
        assert word in first.stdout
    clusters = pd.read_csv(export / "a.csv")
    assert list(clusters.columns) == ["item", "cluster", "confidence"] and len(clusters) == 82
    assert clusters["confidence"].between(0, 1).all()
    below = int((clusters["confidence"] < 0.5).sum())
    assert f"uncertain   {below:,} item{'' if below == 1 else 's'} with confidence < 0.5" in first.stdout
    assert ari_of(first.stdout) >= 0.9
    # How well the confidences tell the images the clusters got right (low is good).
    brier = next(line.split()[1] for line in first.stdout.splitlines() if line.startswith("confidence_brier"))
    assert 0.0 <= float(brier) < 0.05
    # `-o -`: the same bytes on standard output, the summary on standard error.
    second = _process([export / "export.tsv", "-o", "-", "--seed", "3"], "12345", threads=1)
    assert second.returncode == 0, second.stderr
    assert (export / "a.csv").read_text() == second.stdout
    assert "output      standard output" in second.stderr and not (ROOT / "-").exists()


def test_single_item_clusters_are_counted_apart(tmp_path):
    """An image of each of the two smallest classes (5 and 3 of 600 images) met none of its class.
    Every cluster contradicts such an image, and two lone images never compared gain nothing
    together (three would: `pool_lone`), so each stands alone; the count line says how many
    clusters are one item, and each of those items has a low confidence."""
    crowd_shape("uneven", seed=2).write_export(tmp_path / "uneven.tsv")
    result = _run([tmp_path / "uneven.tsv", "-o", tmp_path / "c.csv"])
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "c.csv")
    sizes = table["cluster"].value_counts()
    singles = table[table["cluster"].isin(sizes[sizes == 1].index)]
    assert len(singles) > 0
    assert f"clusters    {len(sizes)} ({len(singles)} of them a single item)\n" in result.stdout
    assert (singles["confidence"] < 0.5).all()


def test_clusters_of_images_between_two_styles_are_counted_as_doubtful(tmp_path, export):
    """10% of the images sit between two styles; the extra clusters the model makes of them have
    a mean confidence below 0.5, and the count line says how many. The demo-sized crowd has none."""
    crowd_shape("shoes", seed=4, between_share=0.1).write_export(tmp_path / "between.tsv")
    result = _run([tmp_path / "between.tsv", "-o", tmp_path / "c.csv"])
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "c.csv")
    stats = table.groupby("cluster")["confidence"].agg(["mean", "size"])
    doubtful = int(((stats["mean"] < 0.5) & (stats["size"] > 1)).sum())
    assert doubtful >= 2
    # "1 of several items" read as one item: the count is of clusters, and says so.
    assert f"{doubtful} clusters of several items with a mean confidence below 0.5)\n" in result.stdout
    clean = _run([export / "export.tsv", "-o", tmp_path / "d.csv"])
    assert "mean confidence below" not in clean.stdout


def test_coassociation_method_and_image_column_in_truth(export):
    truth = pd.read_csv(export / "truth.csv").rename(columns={"item": "image"})
    truth.to_csv(export / "truth_image.csv", index=False)
    result = _run(
        [
            export / "export.tsv",
            "-o",
            export / "c.csv",
            "--method",
            "coassociation",
            "--truth",
            export / "truth_image.csv",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "coassociation" in result.stdout and "ari" in result.stdout
    # The baseline has no prior: its recheck line does not say that a prior placed anything.
    recheck = next(line for line in result.stdout.splitlines() if line.startswith("recheck"))
    assert "prior" not in recheck


def test_bad_export_is_one_line_and_exit_code_2(export):
    lines = (export / "export.tsv").read_text().splitlines()
    header, row = lines[0], lines[5].split("\t")
    row[1] = '"{""group"":1}"'  # one group for ten images
    (export / "bad.tsv").write_text("\n".join([header, lines[1], "\t".join(row)]) + "\n")
    result = _run([export / "bad.tsv", "-o", export / "bad.csv"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "row 2" in result.stderr and "1 group but INPUT:images has 10 images" in result.stderr
    assert not (export / "bad.csv").exists()

    lenient = _run([export / "bad.tsv", "-o", export / "bad.csv", "--lenient"])
    assert lenient.returncode == 0, lenient.stderr
    assert "skipped row 2" in lenient.stderr


@pytest.mark.parametrize("content", ["", "a\tb\n1\t2\n"])
def test_unusable_files(export, content):
    (export / "junk.tsv").write_text(content)
    result = _run([export / "junk.tsv", "-o", export / "junk.csv"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


def test_missing_file_and_bad_truth(export):
    missing = _run([export / "nope.tsv", "-o", export / "x.csv"])
    assert missing.returncode == 2 and missing.stderr == f"error: {export / 'nope.tsv'}: no such file\n"
    (export / "bad_truth.csv").write_text("foo,bar\n1,2\n")
    bad_truth = _run([export / "export.tsv", "-o", export / "x.csv", "--truth", export / "bad_truth.csv"])
    assert bad_truth.returncode == 2 and "needs columns item (or image) and class" in bad_truth.stderr
    # Excel's CSV under a decimal-comma locale (German, French, ...): byte-order mark, CRLF, `;`, an
    # empty last column. It read "needs columns item (or image) and class; found image;class;;".
    truth_rows = (export / "truth.csv").read_text().splitlines()
    semicolons = "\r\n".join(row.replace(",", ";") + ";" for row in truth_rows) + "\r\n"
    (export / "excel.csv").write_bytes(b"\xef\xbb\xbf" + semicolons.encode())
    excel = _run([export / "export.tsv", "-o", export / "x.csv", "--truth", export / "excel.csv"])
    assert excel.returncode == 2 and excel.stderr == (
        f"error: truth file {export / 'excel.csv'}: line 1 has no comma or tab and reads as "
        f"semicolon-separated ({truth_rows[0].replace(',', ';')};): save it comma- or tab-separated (a "
        "spreadsheet set to a decimal comma separates by ;)\n"
    )
    truth = pd.read_csv(export / "truth.csv", dtype=str)
    head = [*truth.head(2).itertuples(index=False)]
    for last, says in (
        ((truth.iloc[0, 0], "x"), f"line 4: item {truth.iloc[0, 0]} repeats line 2"),
        (("", "x"), "line 4: empty item"),
    ):
        (export / "bad_truth.csv").write_text(
            "item,class\n" + "".join(f"{a},{b}\n" for a, b in [*head, last])
        )
        bad = _run([export / "export.tsv", "-o", export / "x.csv", "--truth", export / "bad_truth.csv"])
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr
    # A blank class is an unknown one, as in a run's dataset (it stopped the command): a note, and
    # the scores cover the items that have one.
    (export / "part_truth.csv").write_text(
        "item,class\n" + "".join(f"{a},{b}\n" for a, b in [*head, (truth.iloc[2, 0], "")])
    )
    part = _run([export / "export.tsv", "-o", export / "x.csv", "--truth", export / "part_truth.csv"])
    assert part.returncode == 0, part.stderr
    assert "1 item(s) with a blank class (line 4): scored as items without a class" in part.stderr
    assert "truth       2 items in common" in part.stdout
    # Headers in any case, as in a run's dataset file (`Item,Class` was refused).
    (export / "part_truth.csv").write_text("Item,CLASS" + (export / "part_truth.csv").read_text()[10:])
    capital = _run([export / "export.tsv", "-o", export / "x.csv", "--truth", export / "part_truth.csv"])
    assert capital.returncode == 0 and "truth       2 items in common" in capital.stdout, capital.stderr
    (export / "no_truth.csv").write_text("item,class\n" + "".join(f"{a},\n" for a, _ in head))
    none = _run([export / "export.tsv", "-o", export / "x.csv", "--truth", export / "no_truth.csv"])
    assert none.returncode == 2 and "every class is blank" in none.stderr


def test_truth_without_any_item_of_the_export_is_refused_before_the_fit(export):
    """A truth file naming the images otherwise (file names for URLs) would give scores of nothing:
    the one line names the file and shows an item of each side."""
    (export / "names.csv").write_text("item,class\n000000.jpg,a\n000001.jpg,b\n")
    result = _run([export / "export.tsv", "-o", export / "n.csv", "--truth", export / "names.csv"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"error: truth file {export / 'names.csv'}: none of its 2 items appear")
    assert "e.g. 000000.jpg" in result.stderr and "https://img.example/" in result.stderr
    assert not (export / "n.csv").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_out_of_range_blames_the_option(export, seed):
    result = _run([export / "export.tsv", "-o", export / "s.csv", "--seed", seed])
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: --seed {seed}: must be from 0 to 2**64 - 1\n"


def test_a_comma_separated_export_is_named_as_such(export):
    pd.read_csv(export / "export.tsv", sep="\t", dtype=str).to_csv(export / "export.csv", index=False)
    result = _run([export / "export.csv", "-o", export / "c.csv"])
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "looks comma-separated, but the export must be tab-separated" in result.stderr


def test_a_pipeline_dataset_tsv_is_a_truth_file(export):
    """What a user has at hand after a run: image URL, class and attributes, tab-separated."""
    truth = pd.read_csv(export / "truth.csv", dtype=str).rename(columns={"item": "image"})
    truth.assign(colour="red").to_csv(export / "dataset.tsv", sep="\t", index=False)
    as_csv = _run([export / "export.tsv", "-o", export / "t1.csv", "--truth", export / "truth.csv"])
    as_tsv = _run([export / "export.tsv", "-o", export / "t2.csv", "--truth", export / "dataset.tsv"])
    assert as_tsv.returncode == 0, as_tsv.stderr
    assert ari_of(as_tsv.stdout) == ari_of(as_csv.stdout) >= 0.9


def test_a_dataset_tsv_whose_rows_end_in_a_tab_is_read_as_a_run_reads_it(export):
    """A run reads a dataset whose rows end in an empty cell (a spreadsheet's empty last column); as
    a truth file pandas took its first column for the index and said "line 3: image <a class>
    repeats line 2". A cell there that holds something is refused, naming its line."""
    truth = pd.read_csv(export / "truth.csv", dtype=str).rename(columns={"item": "image"})
    rows = ["image\tclass"] + [f"{image}\t{cls}\t" for image, cls in truth.itertuples(index=False)]
    (export / "tabbed.tsv").write_text("\n".join(rows) + "\n")
    as_csv = _run([export / "export.tsv", "-o", export / "t1.csv", "--truth", export / "truth.csv"])
    tabbed = _run([export / "export.tsv", "-o", export / "t3.csv", "--truth", export / "tabbed.tsv"])
    assert tabbed.returncode == 0, tabbed.stderr
    assert ari_of(tabbed.stdout) == ari_of(as_csv.stdout) >= 0.9
    rows[3] += "red"
    (export / "tabbed.tsv").write_text("\n".join(rows) + "\n")
    refused = _run([export / "export.tsv", "-o", export / "t3.csv", "--truth", export / "tabbed.tsv"])
    assert refused.returncode == 2 and refused.stderr == (
        f"error: truth file {export / 'tabbed.tsv'}, line 4: 3 fields where the header has 2, and a cell "
        "beyond the header's that is not empty: a tab too many?\n"
    )


def test_min_cluster_size_option(export):
    """The option dissolves smaller clusters; when that moves most items the command warns (before,
    one cluster of 93% moved items came with no word); a size no cluster reaches blames the option,
    not the export, and a size below 1 is an `error:` line like every other bad option."""
    result = _run([export / "export.tsv", "-o", export / "m.csv", "--min-cluster-size", "15"])
    assert result.returncode == 0, result.stderr
    sizes = pd.read_csv(export / "m.csv")["cluster"].value_counts()
    assert sizes.min() >= 15
    assert "warning: --min-cluster-size 15 moved " in result.stderr
    assert f"into the {len(sizes)} cluster" in result.stderr
    default = _run([export / "export.tsv", "-o", export / "d.csv"])
    assert "--min-cluster-size" not in default.stderr
    largest = int(pd.read_csv(export / "d.csv")["cluster"].value_counts().max())
    beyond = largest + 1
    too_big = _run([export / "export.tsv", "-o", export / "m2.csv", "--min-cluster-size", beyond])
    assert too_big.returncode == 2
    assert too_big.stderr == (
        f"error: --min-cluster-size {beyond}: no cluster has {beyond} or more items "
        f"(the largest has {largest}); lower it\n"
    )
    beyond_all = _run([export / "export.tsv", "-o", export / "m2.csv", "--min-cluster-size", "500"])
    assert beyond_all.stderr == "error: --min-cluster-size 500: the export has only 82 items; lower it\n"
    zero = _run([export / "export.tsv", "-o", export / "m2.csv", "--min-cluster-size", "0"])
    assert (zero.returncode, zero.stderr) == (2, "error: --min-cluster-size 0: must be 1 or more\n")


def test_a_split_crowd_is_reported_and_the_camp_written(tmp_path):
    """60% of the workers sort by colour: the command follows them, says the crowd is split, and
    writes the style camp's grouping and workers where asked."""
    crowd = generate_crowd(300, 8, seed=0, shares={"diligent": 0.4, "colour": 0.6})
    crowd.write_export(tmp_path / "split.tsv")
    grouping, workers = tmp_path / "camp" / "grouping.csv", tmp_path / "camp" / "workers.csv"
    args = [tmp_path / "split.tsv", "-o", tmp_path / "c.csv"]
    done = _run([*args, "--dissent-output", grouping, "--dissent-workers", workers])
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("dissent"))
    camp = pd.read_csv(workers)["worker"]
    assert f"dissent     {len(camp)} workers (" in line and "another grouping" in line
    assert "warning: the crowd is split" in done.stderr
    assert set(crowd.workers.loc[camp, "type"]) == {"diligent"}
    table = pd.read_csv(grouping)
    assert list(table.columns) == ["item", "cluster"] and len(table) == 300
    assert clustering_scores(table.set_index("item")["cluster"], crowd.truth)["ari"] > 0.9


def test_without_a_camp_the_line_says_so_and_nothing_is_written(tmp_path):
    crowd = generate_crowd(82, 8, seed=11, shares={"diligent": 0.8, "spammer": 0.2})
    crowd.write_export(tmp_path / "plain.tsv")
    done = _run([tmp_path / "plain.tsv", "-o", tmp_path / "c.csv", "--dissent-output", tmp_path / "g.csv"])
    assert done.returncode == 0, done.stderr
    assert "dissent     none: no camp of workers agrees on another grouping" in done.stdout
    assert not (tmp_path / "g.csv").exists() and "g.csv not written" in done.stderr


def test_images_of_no_shared_style_get_one_cluster_each_and_no_design_advice(tmp_path):
    """Six images of six styles: nobody groups any two, so each is a cluster of its own, and the
    warning does not advise a design for styles the answers do not show. Each image was shown with
    only 2-5 of the other 5 (3 HITs of 3), so it says that, and the HITs per image that show each
    image nearly every other: "No design changes that" was more than the labels could tell."""
    generate_crowd(6, 6, seed=0, hit_size=3, overlap=3, shares={"diligent": 1.0}).write_export(
        tmp_path / "e.tsv"
    )
    done = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv"])
    assert done.returncode == 0, done.stderr
    assert "clusters    6 (6 of them a single item)" in done.stdout
    assert "as if every image were a style of its own" in done.stderr
    assert "Each image was shown with ~78% of the others, so an image may share a style" in done.stderr
    assert "hits.hits_per_item 6 shows each image ~95% of the others (~2.0x the answers" in done.stderr
    assert "meets ~" not in done.stderr  # no design for styles of one image
    # 4 pairs of the 5 listed images were never shown together: a round shows them to one another.
    assert "most workers put no two images together, but 4 pairs of them were never shown" in done.stdout


def test_answers_that_ran_out_of_groups_are_reported(tmp_path, export):
    """30-image HITs of 15 styles, 10 groups to paint them: most answers use all 10 and the command
    says the workers ran out of groups. The demo's 10-image HITs never do."""
    crowd = generate_crowd(200, 15, seed=0, design="sized", hit_size=30, n_hits=30, overlap=3)
    crowd.write_export(tmp_path / "big.tsv")
    done = _run([tmp_path / "big.tsv", "-o", tmp_path / "c.csv"])
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("groups"))
    share = int(line.rsplit("; ", 1)[1].split("%")[0])
    assert "at most 10 per answer (~30 images each)" in line and share > 50
    assert f"warning: {share}% of the answers used all 10 groups" in done.stderr
    small = _run([export / "export.tsv", "-o", tmp_path / "d.csv"])
    line = next(line for line in small.stdout.splitlines() if line.startswith("groups"))
    assert line.endswith("; 0% of the answers used 8 for images of more clusters"), line
    assert "ran out of groups" not in small.stderr


def test_hits_of_one_answer_each_are_reported(tmp_path, export):
    """Queries of 3-5 images with one answer each: a tester's 10,000 images came out at ARI 0.36
    with no warning, though no answer could be checked against another."""
    crowd = generate_crowd(120, 6, seed=0, design="sized", hit_size=(3, 5), n_hits=400, overlap=1)
    crowd.write_export(tmp_path / "once.tsv")
    done = _run([tmp_path / "once.tsv", "-o", tmp_path / "c.csv"])
    assert done.returncode == 0, done.stderr
    assert "warning: 100% of the HITs have a single answer: nothing checks it" in done.stderr
    assert "cannot be told from chance" not in done.stderr  # diligent workers: 1,000+ comparisons
    checked = _run([export / "export.tsv", "-o", tmp_path / "d.csv"])  # the demo's overlap 7
    assert "single answer" not in checked.stderr


def test_agreement_unmeasured_for_hits_answered_once_points_at_the_overlap(tmp_path):
    """Workers whose agreement cannot be told from chance on HITs answered once: a tester's 3,000
    images in queries of 3-5 (558 comparisons, kappa 0.12) were told to check the interface and the
    crowd, when the design left the agreement unmeasured. Spammers answering once show it here."""
    crowd = generate_crowd(
        120, 6, seed=0, design="sized", hit_size=(3, 5), n_hits=400, overlap=1, spammer_share=1.0
    )
    crowd.write_export(tmp_path / "once.tsv")
    done = _run([tmp_path / "once.tsv", "-o", tmp_path / "c.csv"])
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "from chance" in line]
    assert line.startswith("warning: the workers' agreement with one another cannot be told from chance")
    assert "more answers per HIT (the overlap) first" in line and "Check that the task's" not in line


def test_a_crowd_whose_workers_agree_only_by_chance_is_warned_of(tmp_path, export):
    """Spammers only: the model found 19-24 clusters at ARI 0 with mean confidence 0.6 and no
    warning, and half the workers seemed to agree with those clusters. Workers do not agree with
    one another by chance, and the command says so; a crowd of 70% spammers still does."""
    for share, warned in ((1.0, True), (0.7, False)):
        crowd = generate_crowd(120, 6, seed=0, spammer_share=share)
        crowd.write_export(tmp_path / "spam.tsv")
        done = _run([tmp_path / "spam.tsv", "-o", tmp_path / "c.csv"])
        assert done.returncode == 0, done.stderr
        said = "warning: the workers agree with one another no more than chance would" in done.stderr
        assert said is warned, (share, done.stderr)
    checked = _run([export / "export.tsv", "-o", tmp_path / "d.csv"])
    assert checked.returncode == 0 and "chance would" not in checked.stderr


def test_a_tiny_crowd_is_not_called_chance_on_evidence_that_cannot_tell(tmp_path):
    """Three images in HITs of three, five workers: 186 comparisons of two workers' labels, but of
    three pairs only, kappa 0.129 and the clusters right (ARI 1.0); the command warned that the
    workers agreed no more than chance and that the clusters were likely noise. Three pairs cannot
    tell a working crowd from chance, so no verdict either way."""
    crowd = generate_crowd(3, 2, seed=0, hit_size=3, overlap=3)
    crowd.write_export(tmp_path / "tiny.tsv")
    crowd.write_truth(tmp_path / "truth.csv")
    done = _run([tmp_path / "tiny.tsv", "-o", tmp_path / "c.csv", "--truth", tmp_path / "truth.csv"])
    assert done.returncode == 0 and ari_of(done.stdout) == 1.0, done.stderr
    assert "chance would" not in done.stderr and "likely noise" not in done.stderr, done.stderr


def test_bots_answering_every_hit_alike_do_not_make_a_careful_crowd_look_like_chance(tmp_path):
    """Two bots on every HIT, one putting all its images in one group and one alternating two groups,
    beside 3 workers: the pooled kappa took the first for a worker who disagrees with everyone
    (chance from everybody's shares of "same", not its own), -0.046, and the command warned that the
    workers agreed no more than chance and that the clusters were likely noise. Now 0.047."""
    crowd = generate_crowd(200, 10, seed=0, overlap=3)
    hits = crowd.export.drop_duplicates("ASSIGNMENT:task_suite_id")
    sizes = hits["INPUT:images"].str.count('"') // 2
    bots = []
    for bot, group in (("bot-one", lambda k: 1), ("bot-two", lambda k: k % 2 + 1)):
        answers = [",".join(f'{{"group":{group(k)}}}' for k in range(n)) for n in sizes]
        ids = hits["ASSIGNMENT:task_suite_id"] + "--" + bot
        bots.append(
            hits.assign(
                **{"OUTPUT:result": answers, "ASSIGNMENT:worker_id": bot, "ASSIGNMENT:assignment_id": ids}
            )
        )
    crowd.export = pd.concat([crowd.export, *bots], ignore_index=True)
    crowd.write_export(tmp_path / "bots.tsv")
    crowd.write_truth(tmp_path / "truth.csv")
    done = _run([tmp_path / "bots.tsv", "-o", tmp_path / "c.csv", "--truth", tmp_path / "truth.csv"])
    assert done.returncode == 0 and ari_of(done.stdout) >= 0.9, done.stderr
    assert "chance would" not in done.stderr and "likely noise" not in done.stderr, done.stderr


def test_two_rounds_aggregate_together_and_the_first_lists_the_images_to_show_again(tmp_path):
    """1,000 images of 25 styles: the first round lists the images only the prior placed and what a
    round of them costs; that round's export aggregated with the first finds the small styles. An
    export given twice stops the command instead of counting its answers twice."""
    from aggregation import followup, followup_crowd

    crowd = generate_crowd(1000, 25, seed=3)
    first, second = tmp_path / "first.tsv", tmp_path / "second.tsv"
    crowd.write_export(first)
    crowd.write_truth(tmp_path / "truth.csv")
    one = _run(
        [
            first,
            "-o",
            tmp_path / "c1.csv",
            "--truth",
            tmp_path / "truth.csv",
            "--recheck-output",
            tmp_path / "again.csv",
        ]
    )
    assert one.returncode == 0, one.stderr
    again = pd.read_csv(tmp_path / "again.csv")
    assert list(again.columns) == ["item", "cluster", "confidence"] and 100 < len(again) < 300
    answers = -(-len(again) // 8) * 10 * 7  # HITs of 8 listed images and 2 anchors (followup.plan)
    assert f"recheck     {len(again):,} images ({len(again) / 1000:.0%}) only the prior placed" in one.stdout
    assert f"2 anchors per HIT, same design: ~{answers:,} answers (+{answers / 7000:.0%})" in one.stdout

    clusters = pd.read_csv(tmp_path / "c1.csv").set_index("item")["cluster"]
    hits = followup.plan(again, clusters, hit_size=10, hits_per_item=10, seed=3)
    followup_crowd(crowd, sorted({x for hit in hits for x in hit}), seed=1003, hits=hits).write_export(second)
    both = _run([first, second, "-o", tmp_path / "c2.csv", "--truth", tmp_path / "truth.csv"])
    assert both.returncode == 0, both.stderr
    assert f"assignments {7000 + answers:,} " in both.stdout
    assert ari_of(both.stdout) > 0.98 > ari_of(one.stdout)

    # The first round's export given twice: its assignments are counted once, with a note (it
    # was refused as "also in"), and the clusters are those of the two rounds.
    twice = _run([first, second, first, "-o", tmp_path / "c3.csv"])
    assert twice.returncode == 0, twice.stderr
    assert f"note: {first}: 7,000 assignments also in {first}, with the same answers: counted once" in (
        twice.stderr
    )
    assert f"assignments {7000 + answers:,} " in twice.stdout
    assert (tmp_path / "c3.csv").read_bytes() == (tmp_path / "c2.csv").read_bytes()


def test_two_downloads_that_share_assignments_count_each_once_and_a_changed_answer_is_refused(
    export, tmp_path
):
    """A day-1 export and a days-1-2 export of one pool hold the same assignments: the command
    refused them ("also in"), though a user who downloaded a pool's results twice expects each
    answer once. The same assignment id with the same answer is now counted once, with a note of
    how many; with another answer in each file it is refused, naming both files, rows and the field."""
    from aggregation.adapter import load_export

    full = load_export(export / "export.tsv")
    day1, days12 = tmp_path / "day1.tsv", tmp_path / "days12.tsv"
    full.iloc[:200].to_csv(day1, sep="\t", index=False)
    full.to_csv(days12, sep="\t", index=False)
    alone = _run([days12, "-o", tmp_path / "alone.csv", "--seed", "3"])
    both = _run([day1, days12, "-o", tmp_path / "both.csv", "--seed", "3"])
    assert alone.returncode == 0 and both.returncode == 0, both.stderr
    assert f"note: {days12}: 200 assignments also in {day1}, with the same answers: counted once" in (
        both.stderr
    )
    assert f"assignments {len(full):,} " in both.stdout
    assert (tmp_path / "both.csv").read_bytes() == (tmp_path / "alone.csv").read_bytes()

    edited = full.copy()
    edited.loc[150, "OUTPUT:result"] = ",".join(['{"group":1}'] * 10)  # row 151 of the file
    edited.to_csv(days12, sep="\t", index=False)
    refused = _run([day1, days12, "-o", tmp_path / "edited.csv"])
    assert refused.returncode == 2 and not (tmp_path / "edited.csv").exists()
    assignment = full.loc[150, "ASSIGNMENT:assignment_id"]
    assert refused.stderr.startswith(
        f"error: {days12} row 151 and {day1} row 151: assignment {assignment} has another "
        "OUTPUT:result in each file"
    ), refused.stderr


def test_the_command_imports_nothing_it_does_not_use(export):
    """Start-up is most of the command's time on a small export: what it never calls, it never imports.

    pydantic came in through typer 0.29's option coercion (0.2-0.3 s per start); the others are the
    pipeline's and the baseline's libraries.
    """
    code = (
        "import sys\n"
        "from crowdclust.cli import main\n"
        f"sys.argv = ['crowdclust', 'aggregate', {str(export / 'export.tsv')!r}, '-o', "
        f"{str(export / 'lean.csv')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "unused = ('pydantic', 'sklearn', 'scipy.stats', 'prefect', 'toloka', 'rich', 'crowdkit', 'httpx')\n"
        "print(sorted(name for name in unused if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_compressed_files_are_read_and_a_cut_one_is_one_error_line(export, tmp_path):
    """A truncated .gz export printed only typer's `Aborted.` (an EOFError); a .gz truth file failed
    to decode."""
    import gzip

    data = gzip.compress((export / "export.tsv").read_bytes())
    (tmp_path / "e.tsv.gz").write_bytes(data)
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress((export / "truth.csv").read_bytes()))
    whole = _run([tmp_path / "e.tsv.gz", "-o", tmp_path / "c.csv", "--truth", tmp_path / "t.csv.gz"])
    assert whole.returncode == 0 and ari_of(whole.stdout) >= 0.9, whole.stderr
    (tmp_path / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    cut = _run([tmp_path / "cut.tsv.gz", "-o", tmp_path / "cut.csv"])
    assert cut.returncode == 2 and cut.stderr.count("\n") == 1, cut.stderr
    assert cut.stderr.startswith(
        f"error: {tmp_path / 'cut.tsv.gz'}: export file cannot be decompressed (EOFError"
    )


def test_an_export_cut_inside_a_quoted_cell_is_called_cut_short_not_blamed_on_its_first_row(export, tmp_path):
    """Cut inside its last row's `INPUT:images` (a quoted cell, written from three double quotes on, most of
    a row's characters), the export was read again without quoting and refused as `row 1 ...
    INPUT:images is not valid JSON (read with no CSV quoting ...)`: a row that was fine, and the wrong
    fix. Cut anywhere in that row, it is the file that was cut short."""
    text = (export / "export.tsv").read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    start = len(text.rstrip("\n")) - len(last)
    line = text.count("\n", 0, start) + 1
    assert last.startswith('"')  # its images cell comes first, quoted
    for at in (3, 60, last.index("\t") - 2, last.index("\t") + 5):  # in the images cell; after it
        (tmp_path / "cut.tsv").write_text(text[: start + at])
        cut = _run([tmp_path / "cut.tsv", "-o", tmp_path / "cut.csv"])
        assert cut.returncode == 2 and cut.stderr.count("\n") == 1, cut.stderr
        assert cut.stderr.startswith(
            f"error: {tmp_path / 'cut.tsv'}: export file is cut short: its last line (line {line}) has "
        ), (at, cut.stderr)


def test_a_compressed_file_under_a_plain_name_is_called_compressed_not_utf16(export, tmp_path):
    """A gzip export saved as `.tsv` (a browser keeping the server's compressed bytes, a rename)
    stopped with "export file is not UTF-8 text: it looks like UTF-16 (a spreadsheet's 'Unicode
    Text'): ... convert it to UTF-8, e.g. with `iconv -f UTF-16 -t UTF-8`", which cannot help."""
    import bz2
    import gzip
    import lzma

    export_bytes, truth_bytes = (export / "export.tsv").read_bytes(), (export / "truth.csv").read_bytes()
    for codec, pack, ending in (
        ("gzip", gzip.compress, ".gz"),
        ("bzip2", bz2.compress, ".bz2"),
        ("xz", lzma.compress, ".xz"),
    ):
        (tmp_path / "e.tsv").write_bytes(pack(export_bytes))
        done = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv"])
        assert done.returncode == 2 and done.stderr == (
            f"error: {tmp_path / 'e.tsv'}: export file is not text: it is {codec}-compressed, but its "
            f"name does not end in {ending}: rename it e.tsv{ending} (then it is read decompressed) or "
            "decompress it first\n"
        )
    # The gzip header's time stamp decides how pandas fails on it: a byte 0x22 (") there made it a
    # quoted cell run to the end ("cannot read truth file ...: Error tokenizing data. C error: EOF
    # inside string starting at row 0"), so this test failed now and then, with the clock.
    for stamp in (0, 0x22):
        (tmp_path / "t.csv").write_bytes(gzip.compress(truth_bytes, mtime=stamp))
        done = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--truth", tmp_path / "t.csv"])
        assert done.returncode == 2 and done.stderr == (
            f"error: truth file {tmp_path / 't.csv'}: not text: it is gzip-compressed, but its name does not "
            "end in .gz: rename it t.csv.gz (then it is read decompressed) or decompress it first\n"
        )
    (tmp_path / "twice.tsv.gz").write_bytes(gzip.compress(gzip.compress(export_bytes)))
    done = _run([tmp_path / "twice.tsv.gz", "-o", tmp_path / "c.csv"])
    assert done.returncode == 2 and done.stderr.endswith(
        "it is gzip-compressed twice over: decompress it once and read the result\n"
    )


def test_an_archive_of_several_files_or_none_is_refused_in_one_error_line(export, tmp_path):
    """pandas reads a `.zip` or `.tar` of exactly one file. Two rounds' exports zipped together, a
    zip from macOS's Compress (which adds `__MACOSX/._NAME`), a file renamed `.zip` or a `.xz` that is
    not xz ended the command in a traceback (`ValueError: Multiple files found in ZIP file`,
    `zipfile.BadZipFile`, `_lzma.LZMAError`), for the export and the truth file alike."""
    import io
    import tarfile
    import zipfile

    export_bytes, truth_bytes = (export / "export.tsv").read_bytes(), (export / "truth.csv").read_bytes()

    def zipped(path: Path, entries: dict[str, bytes]) -> Path:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        return path

    one = zipped(tmp_path / "one.tsv.zip", {"export.tsv": export_bytes})
    assert _run([one, "-o", tmp_path / "c.csv"]).returncode == 0  # one file: read as before
    rounds = zipped(tmp_path / "rounds.zip", {"r1.tsv": export_bytes, "r2.tsv": export_bytes})
    mac = zipped(tmp_path / "mac.zip", {"export.tsv": export_bytes, "__MACOSX/._export.tsv": b"\0\5\26\7"})
    empty = zipped(tmp_path / "empty.zip", {})
    with tarfile.open(tmp_path / "rounds.tar.gz", "w:gz") as archive:
        for name in ("r1.tsv", "r2.tsv"):
            entry = tarfile.TarInfo(name)
            entry.size = len(export_bytes)
            archive.addfile(entry, io.BytesIO(export_bytes))
    renamed, not_xz = tmp_path / "renamed.zip", tmp_path / "e.tsv.xz"
    renamed.write_bytes(export_bytes)
    not_xz.write_bytes(export_bytes)
    several = "entries ({}), and an archive is read only when it holds one file: extract it and give the "
    several += "file, or each export as an argument of its own\n"
    expected = {
        rounds: "is a zip archive of 2 " + several.format("r1.tsv, r2.tsv"),
        mac: "is a zip archive of 2 " + several.format("export.tsv, __MACOSX/._export.tsv"),
        tmp_path / "rounds.tar.gz": "is a tar archive of 2 " + several.format("r1.tsv, r2.tsv"),
        empty: "is an empty zip archive: it holds no file\n",
        renamed: "cannot be read as the zip archive its name says it is (BadZipFile: File is not a zip "
        "file): a download cut short, or a file of another kind named .zip? Give the file as it was "
        "downloaded, or decompress it first\n",
    }
    for path, why in expected.items():
        done = _run([path, "-o", tmp_path / "c.csv"])
        assert (done.returncode, done.stderr) == (2, f"error: {path}: export file {why}"), done.stderr
    truth = zipped(tmp_path / "truth.zip", {"truth.csv": truth_bytes, "old.csv": truth_bytes})
    done = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--truth", truth])
    assert (done.returncode, done.stderr) == (
        2,
        f"error: truth file {truth} is a zip archive of 2 " + several.format("truth.csv, old.csv"),
    ), done.stderr
    done = _run([not_xz, "-o", tmp_path / "c.csv"])
    assert done.returncode == 2 and done.stderr == (
        f"error: {not_xz}: export file cannot be decompressed (LZMAError: Input format not supported by "
        "decoder)\n"
    ), done.stderr
    done = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--truth", not_xz])
    assert done.returncode == 2 and done.stderr == (
        f"error: cannot read truth file {not_xz}: Input format not supported by decoder\n"
    ), done.stderr


def test_a_zst_file_is_read_or_refused_in_one_error_line(export, tmp_path):
    """pandas reads `.zst` only with the `zstandard` package, which the lock does not hold: a `.zst`
    export or truth file ended the command in an ImportError traceback (exit 1)."""
    try:
        import zstandard
    except ImportError:
        zstandard = None
    pack = zstandard.ZstdCompressor().compress if zstandard else bytes  # unread without the package
    (tmp_path / "e.tsv.zst").write_bytes(pack((export / "export.tsv").read_bytes()))
    (tmp_path / "t.csv.zst").write_bytes(pack((export / "truth.csv").read_bytes()))
    out = tmp_path / "c.csv"
    runs = {
        "e.tsv.zst": _run([tmp_path / "e.tsv.zst", "-o", out]),
        "t.csv.zst": _run([export / "export.tsv", "-o", out, "--truth", tmp_path / "t.csv.zst"]),
    }
    for name, run in runs.items():
        if zstandard is not None:
            assert run.returncode == 0, run.stderr
            continue
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr  # one line, no traceback
        assert run.stderr.startswith("error: ") and str(tmp_path / name) in run.stderr
        assert "needs the zstandard package" in run.stderr and "zstd -d" in run.stderr


def test_an_export_without_task_ids_reads_its_hits_by_their_images(export, tmp_path):
    """toloka-kit's default export has no task id: every answer was read as a HIT of its own, and
    the design line said ~70 HITs per image of ~1 answer each for 10 HITs of 7 answers."""
    crowd = generate_crowd(300, 40, seed=2)
    crowd.write_export(tmp_path / "full.tsv")
    full = pd.read_csv(tmp_path / "full.tsv", sep="\t", dtype=str)
    full.drop(columns=["ASSIGNMENT:task_suite_id"]).to_csv(tmp_path / "bare.tsv", sep="\t", index=False)
    runs = [_run([tmp_path / f"{name}.tsv", "-o", tmp_path / f"{name}.csv"]) for name in ("full", "bare")]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert "note: " in runs[1].stderr and "are read as answers to one HIT" in runs[1].stderr
    assert "note: " not in runs[0].stderr
    # The same summary: the recheck line prices a round by the design it reads. (The clusters may
    # differ by an image or two: the held-out folds are dealt by task id, and the ids differ.)
    kept = [
        [line for line in run.stdout.splitlines() if line.split()[0] not in ("seconds", "output")]
        for run in runs
    ]
    assert kept[0] == kept[1] and any(line.startswith("recheck") and "answers" in line for line in kept[0])


def test_only_the_clusters_go_to_standard_output(tmp_path, export, monkeypatch):
    """`--workers-output -` (as `-o -`) wrote a file named "-" in the working directory, and with
    `--recheck-output -` too the second replaced the first, exit code 0 and nothing said."""
    monkeypatch.chdir(tmp_path)
    for option in ("--workers-output", "--recheck-output", "--dissent-output", "--unanswered-output"):
        done = _run([export / "export.tsv", "-o", "-", option, "-"])
        assert done.returncode == 2, done.stderr
        assert (
            done.stderr
            == f"error: {option} -: only -o writes to standard output; give {option} a file path\n"
        )
        assert not (tmp_path / "-").exists() and "item,cluster" not in done.stdout  # refused before the fit


def test_an_unwritable_output_is_refused_before_the_fit_and_no_stale_camp_is_left(tmp_path, export):
    done = _run([export / "export.tsv", "-o", tmp_path])
    assert done.returncode == 2 and done.stderr == f"error: cannot write {tmp_path}: it is a directory\n"
    assert "seconds" not in done.stdout  # nothing was fitted
    stale = tmp_path / "camp.csv"
    stale.write_text("item,cluster\nold,0\n")
    again = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--dissent-output", stale])
    assert again.returncode == 0 and not stale.exists(), again.stderr
    assert "not written (the file of an earlier run removed)" in again.stderr


def test_the_workers_who_agree_no_better_than_chance_are_counted_and_listed_first(tmp_path):
    """With 60% spammers the clusters were right (ARI 1.0) and nothing told the user which workers
    to block: the two coins per worker lived only in the Python API."""
    crowd = generate_crowd(300, 10, seed=0, spammer_share=0.6)
    crowd.write_export(tmp_path / "e.tsv")
    done = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv", "--workers-output", tmp_path / "w.csv"])
    assert done.returncode == 0, done.stderr
    workers = pd.read_csv(tmp_path / "w.csv")
    assert list(workers.columns[:7]) == [
        "worker", "answers", "labels", "agreement", "sensitivity", "specificity", "informedness"
    ]  # fmt: skip
    kinds = workers["worker"].map(crowd.workers["type"])
    flagged = workers["informedness"] < 0.2
    assert set(kinds[flagged]) <= {"spammer", "colour", "splitter"} and kinds[~flagged].ne("spammer").all()
    assert workers["informedness"].is_monotonic_increasing  # the ones to block first
    line = next(line for line in done.stdout.splitlines() if line.startswith("workers"))
    finer = flagged & (workers["specificity"] >= 0.95) & (workers["sensitivity"] >= 0.05)
    assert set(kinds[finer]) <= {"splitter"}  # counted apart: see the next test
    assert f"({int((flagged & ~finer).sum())} of them agree with the clusters no better than chance" in line
    answered = crowd.labels[["task", "worker"]].drop_duplicates()["worker"].value_counts()
    assert workers.set_index("worker")["answers"].to_dict() == answered.to_dict()


def test_workers_who_split_the_clusters_finer_are_not_called_chance(tmp_path):
    """A third of the crowd split each style by colour: they never put two styles together
    (specificity 1.00) but put only ~1 in 6 pairs of a style together, so their informedness is
    ~0.17, and the workers line read "39 of them agree with the clusters no better than chance":
    a third of a careful crowd, listed as the spammers to block. Now they are counted apart."""
    crowd = generate_crowd(300, 8, seed=0, shares={"diligent": 0.67, "splitter": 0.33})
    crowd.write_export(tmp_path / "e.tsv")
    done = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv", "--workers-output", tmp_path / "w.csv"])
    assert done.returncode == 0, done.stderr
    workers = pd.read_csv(tmp_path / "w.csv")
    low = workers[workers["informedness"] < 0.2]
    assert len(low) and set(low["worker"].map(crowd.workers["type"])) == {"splitter"}
    line = next(line for line in done.stdout.splitlines() if line.startswith("workers"))
    assert "no better than chance" not in line, line
    assert f"({len(low)} of them split the clusters finer but hardly ever join two (" in line, line


def test_careful_workers_are_not_called_chance_on_a_label_or_two(tmp_path):
    """30 images of 30 styles, careful workers only: the clusters merged one pair wrongly, and the 7
    workers who had set that pair apart scored sensitivity 0 on that one label (against 300-580
    right "apart" labels each), informedness 0, and were counted as agreeing with the clusters no
    better than chance: workers to block. They are now counted as too few labels to tell."""
    crowd = generate_crowd(30, 30, seed=0, overlap=5, shares={"diligent": 1.0})
    crowd.write_export(tmp_path / "e.tsv")
    done = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv", "--workers-output", tmp_path / "w.csv"])
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("workers"))
    assert "no better than chance" not in line, line
    workers = pd.read_csv(tmp_path / "w.csv")
    thin = int((workers["informedness"] < 0.2).sum())
    assert thin and f"({thin} of them score informedness < 0.2 on fewer than 5 labels of pairs" in line, line


def test_a_worker_at_exactly_the_threshold_is_not_counted_below_it():
    """At 10,000 images the workers line counted 662 workers below informedness 0.2 where
    --workers-output, written to six decimals, had 656 below and 6 at 0.200000: splitters who said
    "same" to 1 in 5 pairs of a cluster and never across two, summed as 1/5 + 1 - 1 =
    0.19999999999999996."""
    from aggregation import build_pairs
    from aggregation.workers import worker_quality

    # Worker w: five HITs of two images of one cluster, "same" in one; one HIT of two clusters, apart.
    rows = [
        (f"t{k}", "w", item, group)
        for k in range(5)
        for item, group in ((f"a{k}", 1), (f"b{k}", 1 + (k > 0)))
    ]
    rows += [("u", "w", "a0", 1), ("u", "w", "c", 2)]
    pairs = build_pairs(pd.DataFrame(rows, columns=["task", "worker", "item", "label"]))
    clusters = [0 if item.startswith(("a", "b")) else 1 for item in pairs.items]
    quality = worker_quality(pairs, clusters).loc["w"]
    assert (quality["sensitivity"], quality["specificity"]) == (0.2, 1.0)
    assert quality["informedness"] == 0.2 and not quality["informedness"] < 0.2


def test_answers_of_one_group_each_are_warned_about_and_no_worker_is_blamed(tmp_path, export):
    """Every answer put all its images in one group: one cluster and no word said; and with one
    cluster every worker scored informedness 0, 'no better than chance'."""
    frame = pd.read_csv(export / "export.tsv", sep="\t", dtype=str)
    frame["OUTPUT:result"] = frame["INPUT:images"].map(
        lambda cell: ",".join(['{"group":1}'] * (cell.count(",") + 1))
    )
    frame.to_csv(tmp_path / "one.tsv", sep="\t", index=False)
    done = _run([tmp_path / "one.tsv", "-o", tmp_path / "c.csv", "--workers-output", tmp_path / "w.csv"])
    assert done.returncode == 0, done.stderr
    assert "warning: every answer put all its images in one group" in done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("workers"))
    assert line.split() == ["workers", str(frame["ASSIGNMENT:worker_id"].nunique())]
    assert pd.read_csv(tmp_path / "w.csv")["informedness"].isna().all()


def test_images_no_answer_is_left_for_are_named_and_written(export, tmp_path):
    """Images shown only by rejected assignments or by skipped bad rows are in no cluster: the
    command warns with their number and names, counts them in the summary and writes them all
    with --unanswered-output. Before, they vanished without a word."""
    full = pd.read_csv(export / "export.tsv", sep="\t", dtype=str, keep_default_na=False)
    extra = full.iloc[:3].copy()
    extra["INPUT:images"] = ['"NEW1","NEW2"', '"NEW1","NEW2"', '"NEW3"']
    extra["OUTPUT:result"] = ['{"group":1},{"group":2}', '{"group":1},{"group":1}', "not json"]
    extra["ASSIGNMENT:status"] = ["REJECTED", "REJECTED", "APPROVED"]
    extra["ASSIGNMENT:task_suite_id"] = ["new-a", "new-a", "new-b"]
    extra["ASSIGNMENT:assignment_id"] = ["new-a--1", "new-a--2", "new-b--1"]
    pd.concat([full, extra]).to_csv(tmp_path / "e.tsv", sep="\t", index=False)
    listed = tmp_path / "unanswered.csv"
    args = [tmp_path / "e.tsv", "-o", tmp_path / "c.csv", "--lenient", "--truth", export / "truth.csv"]
    result = _run([*args, "--unanswered-output", listed])
    assert result.returncode == 0, result.stderr
    assert "unanswered  3 images of the export with no answer left, in no cluster" in result.stdout
    assert "warning: 3 images of the export have no answer left" in result.stderr
    assert "in no cluster: NEW1, NEW2, NEW3. Send them again." in result.stderr
    assert pd.read_csv(listed)["item"].tolist() == ["NEW1", "NEW2", "NEW3"]
    assert not {"NEW1", "NEW2", "NEW3"} & set(pd.read_csv(tmp_path / "c.csv")["item"])
    # A truth file that only half overlaps says how much of each side the other lacks.
    truth = pd.read_csv(export / "truth.csv")
    half = pd.concat([truth.iloc[:40], pd.DataFrame({"item": ["ELSEWHERE"], "class": [0]})])
    half.to_csv(tmp_path / "half.csv", index=False)
    partial = _run(
        [tmp_path / "e.tsv", "-o", tmp_path / "c.csv", "--lenient", "--truth", tmp_path / "half.csv"]
    )
    assert partial.returncode == 0, partial.stderr
    assert "; --unanswered-output writes them all." in partial.stderr
    assert (
        "truth       40 items in common; 42 clustered without a class in the truth file; "
        "1 of its items not clustered (1 not in the export)" in partial.stdout
    )
    # The truth file's items outside the clusters, said apart: never shown, or shown without an
    # answer ("4 of its items not clustered" read as if the command had dropped them).
    with_new = pd.concat([truth, pd.DataFrame({"item": ["NEW1", "NEW2", "ELSEWHERE"], "class": [0, 0, 0]})])
    with_new.to_csv(tmp_path / "more.csv", index=False)
    both = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv", "--lenient", "--truth", tmp_path / "more.csv"])
    assert both.returncode == 0, both.stderr
    assert "; 3 of its items not clustered (1 not in the export, 2 with no answer left)\n" in both.stdout


def test_an_image_under_two_spellings_of_its_url_is_warned_of_naming_both(export, tmp_path):
    """A second round's export whose input file was re-saved with `http://` URLs (or %-encoded, or
    the host in capitals) made every image two items, each clustered on its own half of the answers,
    without a word: clusters.csv listed each picture twice, possibly in two clusters."""
    full = pd.read_csv(export / "export.tsv", sep="\t", dtype=str, keep_default_na=False)
    half = len(full) // 2
    full.iloc[:half].to_csv(tmp_path / "r1.tsv", sep="\t", index=False)
    respelled = full.iloc[half:].copy()
    respelled["INPUT:images"] = respelled["INPUT:images"].str.replace("https://", "http://", regex=False)
    respelled.to_csv(tmp_path / "r2.tsv", sep="\t", index=False)

    one = _run([tmp_path / "r1.tsv", "-o", tmp_path / "c1.csv"])
    assert one.returncode == 0, one.stderr
    assert "spellings" not in one.stderr
    both = _run([tmp_path / "r1.tsv", tmp_path / "r2.tsv", "-o", tmp_path / "c2.csv"])
    assert both.returncode == 0, both.stderr
    written = set(pd.read_csv(tmp_path / "c2.csv")["item"])
    twice = sorted(item for item in written if item.replace("https://", "http://") in written - {item})
    assert len(twice) > 60
    first = twice[0].replace("https://", "http://")
    assert (
        f"warning: {len(twice)} images of the exports appear under more than one spelling of their URL, and "
        f"each spelling is clustered as an image of its own: {first} and {first.replace('http://', 'https://')}"
        in both.stderr
    )


def test_an_output_that_is_an_input_or_another_output_is_refused_before_anything_is_written(export, tmp_path):
    """`-o export.tsv` (a completed name) replaced the user's export with the clusters, `-o` on the
    truth file replaced the truth, and two options naming one file kept only the last one written,
    all with exit code 0."""
    source = tmp_path / "export.tsv"
    source.write_bytes((export / "export.tsv").read_bytes())
    truth = tmp_path / "truth.csv"
    truth.write_bytes((export / "truth.csv").read_bytes())
    over_export = _run([source, "-o", tmp_path / "." / "export.tsv"])
    assert over_export.returncode == 2, over_export.stderr
    assert over_export.stderr == (
        f"error: --output {tmp_path / '.' / 'export.tsv'} is the export {source}: writing there would "
        "replace it; give the output a path of its own\n"
    )
    assert source.read_bytes() == (export / "export.tsv").read_bytes()
    over_truth = _run([source, "-o", truth, "--truth", truth])
    assert over_truth.returncode == 2 and f"--output {truth} is the truth file {truth}" in over_truth.stderr
    assert truth.read_bytes() == (export / "truth.csv").read_bytes()
    both = _run([source, "-o", tmp_path / "c.csv", "--workers-output", tmp_path / "c.csv"])
    assert both.returncode == 2 and not (tmp_path / "c.csv").exists()
    assert f"--workers-output {tmp_path / 'c.csv'} is the --output file" in both.stderr


def test_a_truth_file_that_is_not_utf8_names_its_line(export, tmp_path):
    """A truth file saved as Latin-1 (a class name with an accent) or as a spreadsheet's UTF-16 got
    pandas' "can't decode byte 0xe9 in position 3", an offset in its read buffer, not a line."""
    lines = (export / "truth.csv").read_text().splitlines()
    lines[5] = lines[5] + "é"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("\n".join(lines).encode("latin-1"))
    result = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--truth", latin])
    assert result.returncode == 2 and not (tmp_path / "c.csv").exists()
    assert result.stderr.startswith(
        f"error: truth file {latin}, line 6: byte 0xe9 cannot be UTF-8 (Latin-1 or Windows-1252, perhaps)"
    )
    wide = tmp_path / "wide.csv"
    wide.write_bytes((export / "truth.csv").read_text().encode("utf-16"))
    result = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--truth", wide])
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: truth file {wide}: not UTF-8 text: it looks like UTF-16")
    # Without a byte-order mark it decodes as UTF-8, a NUL beside each letter: "needs columns item
    # (or image) and class; found i t e m ,  c l a s s".
    bare = tmp_path / "bare.csv"
    bare.write_bytes((export / "truth.csv").read_text().encode("utf-16-le"))
    result = _run([export / "export.tsv", "-o", tmp_path / "c.csv", "--truth", bare])
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: truth file {bare}: not UTF-8 text: it looks like UTF-16")


def test_an_output_that_cannot_be_written_whole_leaves_the_earlier_file_as_it_was(export, tmp_path):
    """`-o clusters.csv` was written in place: a full disk (or a kill) in the middle left the earlier
    run's clusters gone and part of the new ones, which the next reader took for the whole. Here the
    process may write at most 1,500 bytes to any file (EFBIG beyond, as ENOSPC on a full disk) and the
    82 rows are ~2.5 KB."""
    import resource

    output = tmp_path / "clusters.csv"
    earlier = "item,cluster,confidence\nan-earlier-run,0,1.000000\n"
    output.write_text(earlier)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    refused = subprocess.run(
        [*CLI, str(export / "export.tsv"), "-o", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=ROOT,
        timeout=300,
        preexec_fn=small_files,
    )
    assert refused.returncode == 2
    assert refused.stderr == f"error: cannot write {output}: File too large\n"
    assert output.read_text() == earlier and sorted(tmp_path.iterdir()) == [output]
    # A path that is not a regular file is written as it is (it was never replaced by a file).
    done = _process([export / "export.tsv", "-o", output, "--workers-output", "/dev/stdout"], "0")
    assert done.returncode == 0, done.stderr
    assert "worker,answers,labels,agreement" in done.stdout and Path("/dev/stdout").is_symlink()
    assert len(pd.read_csv(output)) == 82


def _export_per_category(path: Path, categories: int = 3, styles: int = 4, per_style: int = 12) -> None:
    """A shop's HITs made per category (shoes, bags, ...): 8 images of one category each, 5 careful
    workers per HIT, so no HIT shows images of two categories together."""
    rng = np.random.default_rng(0)
    rows = []
    size = styles * per_style
    for category in range(categories):
        for seed_item in range(size):
            others = rng.choice(np.delete(np.arange(size), seed_item), size=7, replace=False)
            hit = rng.permutation(np.r_[seed_item, others])
            images = ",".join(f'"https://shop.example/c{category}/{i:03d}.jpg"' for i in hit)
            task = f"c{category}-t{seed_item}"
            for worker in rng.choice(30, size=5, replace=False):
                colours = rng.permutation(10) + 1  # each answer paints the styles its own way
                result = ",".join(f'{{"group": {colours[i // per_style]}}}' for i in hit)
                rows.append((images, result, task, f"{task}-w{worker}", f"w{worker}"))
    columns = ["INPUT:images", "OUTPUT:result", "ASSIGNMENT:task_id", "ASSIGNMENT:assignment_id"]
    pd.DataFrame(rows, columns=[*columns, "ASSIGNMENT:worker_id"]).to_csv(path, sep="\t", index=False)


def test_clusters_that_join_images_no_hit_links_are_warned_of(tmp_path, export):
    """HITs made per category never compare two categories' images, so no label joins or parts
    them, and the prior put a style of each category in one cluster: a shop's 3 categories of 10
    styles came out as 10 clusters at ARI 0.47, every image above confidence 0.5, with no warning."""
    _export_per_category(tmp_path / "shop.tsv")
    done = _run([tmp_path / "shop.tsv", "-o", tmp_path / "c.csv"])
    assert done.returncode == 0, done.stderr
    clusters = pd.read_csv(tmp_path / "c.csv")
    category = clusters["item"].str.extract(r"/(c\d)/", expand=False)
    mixed = int((category.groupby(clusters["cluster"]).nunique() > 1).sum())
    assert mixed > 0  # what the warning is about: the prior's clusters across categories
    assert (
        "warning: the answers fall into 3 sets of images that no HIT links (the largest: 48, 48, 48 "
        f"images): no answer compares images of two sets, yet {mixed:,} clusters hold images of several"
    ) in done.stderr
    assert "aggregate each category's answers on its own" in done.stderr
    # Each category on its own: its own styles, and nothing to warn of.
    one = tmp_path / "one.tsv"
    shop = pd.read_csv(tmp_path / "shop.tsv", sep="\t", dtype=str)
    shop[shop["INPUT:images"].str.contains("/c0/")].to_csv(one, sep="\t", index=False)
    alone = _run([one, "-o", tmp_path / "one.csv"])
    assert alone.returncode == 0, alone.stderr
    assert "no HIT links" not in alone.stderr and "clusters    4" in alone.stdout
    checked = _run([export / "export.tsv", "-o", tmp_path / "d.csv"])  # the demo's design links all
    assert checked.returncode == 0 and "no HIT links" not in checked.stderr


def test_an_export_written_without_quoting_is_read_as_written(tmp_path, export):
    """A Toloka export downloaded again from a spreadsheet as tab-separated values has its cells as
    they are (`"https://...","https://..."`), not quoted as Toloka quotes them: read with quoting,
    every row stopped with `INPUT:images is not valid JSON`, though each cell was valid JSON."""
    quoted = pd.read_csv(export / "export.tsv", sep="\t", dtype=str, keep_default_na=False)
    lines = ["\t".join(quoted.columns), *("\t".join(row) for row in quoted.itertuples(index=False))]
    (tmp_path / "sheet.tsv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    assert (tmp_path / "sheet.tsv").read_text().splitlines()[1].startswith('"https://')
    done = _run([tmp_path / "sheet.tsv", "-o", tmp_path / "sheet.csv", "--seed", "3"])
    assert done.returncode == 0, done.stderr
    assert "note: " in done.stderr and "read with no CSV quoting" in done.stderr
    same = _run([export / "export.tsv", "-o", tmp_path / "quoted.csv", "--seed", "3"])
    assert same.returncode == 0 and "CSV quoting" not in same.stderr  # Toloka's own quoting
    assert (tmp_path / "sheet.csv").read_bytes() == (tmp_path / "quoted.csv").read_bytes()
    # A bad row of such a file is named as in any export, and --lenient skips it.
    cells = lines[5].split("\t")
    cells[quoted.columns.get_loc("OUTPUT:result")] = ""
    (tmp_path / "bad.tsv").write_text("\r\n".join([*lines[:5], "\t".join(cells), *lines[6:]]) + "\r\n")
    bad = _run([tmp_path / "bad.tsv", "-o", tmp_path / "bad.csv"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith(f"error: {tmp_path / 'bad.tsv'}: row 5 (assignment ")
    assert "empty cell in OUTPUT:result (read with no CSV quoting" in bad.stderr
    lenient = _run([tmp_path / "bad.tsv", "-o", tmp_path / "bad.csv", "--lenient"])
    assert lenient.returncode == 0 and "skipped     1 row" in lenient.stdout
    # A quoted export's bad row keeps its own words, bracketed images too (`"[""https://...`).
    quoted["INPUT:images"] = "[" + quoted["INPUT:images"] + "]"
    quoted.loc[4, "OUTPUT:result"] = ""
    quoted.to_csv(tmp_path / "quoted.tsv", sep="\t", index=False)
    assert (tmp_path / "quoted.tsv").read_text().splitlines()[1].startswith('"[""https://')
    own = _run([tmp_path / "quoted.tsv", "-o", tmp_path / "q.csv"])
    assert own.returncode == 2 and own.stderr.endswith(": empty cell in OUTPUT:result\n"), own.stderr


def test_a_reader_that_closes_standard_output_early_leaves_the_other_outputs_and_the_summary(tmp_path):
    """`-o - | head`: the pipe closed while the clusters were written, and the command ended there,
    exit code 1 and no word: no summary, no warnings, and no --workers-output file."""
    crowd = generate_crowd(120, 6, seed=2)
    crowd.write_export(tmp_path / "short.tsv")
    # Long image names, so that the clusters outgrow the pipe's buffer and the reader's close is met.
    text = (
        (tmp_path / "short.tsv")
        .read_text()
        .replace("https://img.example/", "https://img.example/" + "x" * 2000)
    )
    (tmp_path / "e.tsv").write_text(text)
    args = [*CLI, tmp_path / "e.tsv", "-o", "-", "--workers-output", tmp_path / "w.csv"]
    with subprocess.Popen(
        [str(arg) for arg in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as process:
        assert process.stdout.readline() == "item,cluster,confidence\n"
        process.stdout.close()  # as head does after its lines
        stderr = process.stderr.read()
        assert process.wait(timeout=300) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert "clusters    " in stderr and "output      standard output" in stderr  # the summary
    assert stderr.rstrip().endswith(
        "warning: standard output was closed before the clusters were all written (its reader stopped "
        "early, as head does): the other outputs and this summary are complete; -o FILE writes every cluster"
    )
    assert len(pd.read_csv(tmp_path / "w.csv")) == crowd.labels["worker"].nunique()


def test_an_accented_image_name_in_two_unicode_forms_is_warned_of(export, tmp_path):
    """A second round's input file built from file names read on a Mac spells an accented letter as
    a letter and a combining accent (NFD), the first round's as one character (NFC): every image
    with an accent in its name was two items, each on its share of the answers, and nothing said so."""
    full = pd.read_csv(export / "export.tsv", sep="\t", dtype=str, keep_default_na=False)
    full["INPUT:images"] = full["INPUT:images"].str.replace(
        "img.example/", "img.example/caf\u00e9-", regex=False
    )
    half = len(full) // 2
    full.iloc[:half].to_csv(tmp_path / "r1.tsv", sep="\t", index=False)
    mac = full.iloc[half:].copy()
    mac["INPUT:images"] = mac["INPUT:images"].map(lambda cell: unicodedata.normalize("NFD", cell))
    mac.to_csv(tmp_path / "r2.tsv", sep="\t", index=False)
    both = _run([tmp_path / "r1.tsv", tmp_path / "r2.tsv", "-o", tmp_path / "c.csv"])
    assert both.returncode == 0, both.stderr
    written = set(pd.read_csv(tmp_path / "c.csv")["item"])
    twice = {item for item in written if unicodedata.normalize("NFD", item) in written - {item}}
    assert len(twice) > 60 and len(written) > 82  # the first round's spelling of images both show
    assert (
        f"warning: {len(twice)} images of the exports appear under more than one spelling of their URL, and "
        "each spelling is clustered as an image of its own: "
    ) in both.stderr
    assert "or in an accented letter written as one character or as a letter and an accent" in both.stderr
    alone = _run([tmp_path / "r1.tsv", "-o", tmp_path / "c1.csv"])
    assert alone.returncode == 0 and "spelling" not in alone.stderr


def test_clusters_that_join_parts_no_answer_compared_are_warned_of(tmp_path, export):
    """HITs that each show 4 styles of 12 (5 images of each), the styles regrouped for each of 3
    rounds: every style meets 9 of the 11 others at most, the HITs are linked, and the prior joined
    styles that never met: 6 clusters for 12 (ARI 0.54; the baseline's 12 at 1.0), 220 of the 240
    images above confidence 0.5, with no warning."""
    rng = np.random.default_rng(2)
    styles, per_style = 12, 20
    members = np.arange(styles * per_style).reshape(styles, per_style)
    rows = []
    for round_ in range(3):
        for group in rng.permutation(styles).reshape(-1, 4):
            chunks = [rng.permutation(members[style]).reshape(-1, 5) for style in group]
            for k in range(per_style // 5):
                hit = rng.permutation(np.concatenate([chunk[k] for chunk in chunks]))
                images = ",".join(f'"https://img.example/{i:03d}.jpg"' for i in hit)
                task = f"r{round_}-{'-'.join(map(str, group))}-{k}"
                for worker in rng.choice(30, size=5, replace=False):
                    colours = dict(zip(group.tolist(), rng.permutation(10)[:4] + 1, strict=True))
                    result = ",".join(f'{{"group": {colours[i // per_style]}}}' for i in hit)
                    rows.append((images, result, task, f"{task}-w{worker}", f"w{worker}"))
    columns = ["INPUT:images", "OUTPUT:result", "ASSIGNMENT:task_id", "ASSIGNMENT:assignment_id"]
    frame = pd.DataFrame(rows, columns=[*columns, "ASSIGNMENT:worker_id"])
    frame.to_csv(tmp_path / "e.tsv", sep="\t", index=False)
    done = _run([tmp_path / "e.tsv", "-o", tmp_path / "c.csv"])
    assert done.returncode == 0, done.stderr
    clusters = pd.read_csv(tmp_path / "c.csv")
    style = clusters["item"].str.extract(r"/(\d+)\.jpg", expand=False).astype(int) // per_style
    assert style.groupby(clusters["cluster"]).nunique().max() > 1  # styles that never met, joined
    outside = int(
        re.search(r"^warning: ([\d,]+) of 240 images \(\d+%\) are in a cluster", done.stderr, re.M)[1]
    )
    assert outside > 80 and "no HIT links" not in done.stderr  # the HITs are linked
    assert "only the prior joined them, at confidences up to 1" in done.stderr
    checked = _run([export / "export.tsv", "-o", tmp_path / "d.csv"])  # the demo's HITs compare all
    assert checked.returncode == 0 and "that no answer compared them with" not in checked.stderr
