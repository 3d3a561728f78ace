"""Benchmark of the aggregation core against its targets; prints the figures.

    .venv/bin/python bench/bench_aggregation.py                 # everything up to N = 10,000
    .venv/bin/python bench/bench_aggregation.py --quick         # skip the large catalogue
    .venv/bin/python bench/bench_aggregation.py --scale 100000  # the large catalogue at N = 100,000
                                                                # (200 styles, ~32 M labels) instead
    .venv/bin/python bench/bench_aggregation.py --seeds 0 1     # the large catalogue on two seeds
    .venv/bin/python bench/bench_aggregation.py --only-shapes --shape-seeds 0 1 2 3 4 5  # shapes only
    .venv/bin/python bench/bench_aggregation.py --only-large --hits-per-item 30  # the large catalogue
                                                                # with a design that carries the information

Targets (2-core machine): N=82 whole process <= 1.5 s warm, ARI >= 0.95 (median of 5 seeds);
every synthetic crowd shape (partial-clustering queries with M = 3 and 5, 35-image HITs, uneven
classes, the shoes design): clusters found within ±25% of the truth and ARI >= the co-association
baseline told the true K, over 3 seeds; N=10,000 (40 uneven styles) whole process <= 20 s, peak RSS
<= 1 GB, ARI >= 0.97, B-cubed F1 >= 0.95, clusters within ±10%; N=100,000 (200 styles) <= 5 min,
<= 8 GB, same quality; same output in two processes with different PYTHONHASHSEED and thread counts.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregation import (  # noqa: E402
    CoAssociationClustering,
    CrowdClustering,
    build_pairs,
    clustering_scores,
    confidence_scores,
    crowd_shape,
    design_information,
    find_dissent,
    followup,
    followup_crowd,
    generate_crowd,
    single_item_clusters,
)
from aggregation.confidence import item_confidence  # noqa: E402
from aggregation.consensus import ALPHA  # noqa: E402
from aggregation.oracle import linked_oracle, piece_oracle, placement_oracle  # noqa: E402
from aggregation.partners import partner_signal  # noqa: E402

CLI = [sys.executable, "-m", "crowdclust.cli", "aggregate"]
# `crowdclust aggregate` as above, writing its own peak RSS (kB) to the file named by PEAK_FILE on
# exit. wait4's ru_maxrss cannot give it: subprocess starts the child with vfork, and at exec Linux
# records the parent's high-water mark as the child's, so after this bench had generated the
# 10,000-image crowd in-process it reported its own 928 MB for a run that peaked at 764 MB.
# VmHWM belongs to the memory map the exec created, so the child's own peak is what it shows.
PEAK_PROBE = """
import atexit, os, runpy, sys
def _write_peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(kb)
atexit.register(_write_peak)
sys.argv[0] = "crowdclust"
runpy.run_module("crowdclust.cli", run_name="__main__", alter_sys=True)
"""


def run_cli(args: list, env: dict | None = None) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MB), stdout and CPU seconds (user + sys) of one `crowdclust aggregate`.

    The peak is the process's own (see `PEAK_PROBE`); where there is no /proc, wait4's figure,
    which may be this bench's own peak instead.
    """
    probe = Path("/proc/self/status").exists()
    command = [sys.executable, "-c", PEAK_PROBE, "aggregate"] if probe else CLI
    with tempfile.NamedTemporaryFile("r", suffix=".kb") as peak:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*command, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT, env={**os.environ, **(env or {}), "PEAK_FILE": peak.name},
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out = proc.stdout.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"crowdclust aggregate failed: {proc.stderr.read()}")
        rss = int(peak.read()) / 1024 if probe else usage.ru_maxrss / 1024
    return wall, rss, out, usage.ru_utime + usage.ru_stime


def ari_of(stdout: str) -> float:
    return float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("ari")))


def fit(model, crowd) -> tuple[float, float, int]:
    started = time.perf_counter()
    clusters = model.fit_predict(crowd.labels)
    return time.perf_counter() - started, clustering_scores(clusters, crowd.truth)["ari"], model.n_clusters_


def calibration_of(model, crowd) -> tuple[float, ...]:
    """Brier scores, then log losses, of the model's conditional (every answer weighing 1), of the
    conditional averaged over resampled answers (`aggregation.confidence`) and of the confidences
    (that, times the item's piece's share moved as a block, `aggregation.pieces`): lower is better."""
    pairs = model.pairs_
    labels = model.labels_.reindex(pairs.items).to_numpy()
    log_alpha, seed = math.log(ALPHA), model.random_state
    conditional = pd.Series(item_confidence(pairs, labels, log_alpha, draws=0), index=pairs.items)
    resampled = pd.Series(item_confidence(pairs, labels, log_alpha, seed=seed), index=pairs.items)
    scores = [
        confidence_scores(model.labels_, c, crowd.truth) for c in (conditional, resampled, model.confidence_)
    ]
    return tuple(score[name] for name in ("brier", "log_loss") for score in scores)


def line(label: str, value: str, target: str = "") -> None:
    print(f"  {label:<51} {value:<29} {target}")


def oracles(labels, truth) -> dict[str, dict[str, float]]:
    """ARI and B-cubed F1 of the bounds of `aggregation.oracle` on these labels."""
    pairs = build_pairs(labels)
    return {
        "placement": clustering_scores(placement_oracle(pairs, truth), truth),
        "pieces": clustering_scores(piece_oracle(pairs, truth), truth),
        "linked": clustering_scores(linked_oracle(pairs, truth), truth),
    }


def set_apart_line(label: str, written: pd.DataFrame, truth: pd.Series, apart: pd.Series) -> None:
    """Print the scores of `clusters.csv` with the `apart` items each standing alone: what a user who
    keeps only the other placements and sends these back to the crowd has now."""
    clusters = written.set_index("item")["cluster"].astype(str)
    mask = apart.to_numpy()
    clusters[mask] = ["apart-" + str(item) for item in written["item"][mask]]
    scores = clustering_scores(clusters, truth)
    figures = f"{scores['ari']:.3f} / {scores['bcubed_f1']:.3f} ({scores['bcubed_precision']:.3f})"
    line(label, f"{int(mask.sum()):,}: {figures}", "ARI / B-cubed F1 (precision)")


def oracle_line(bounds: list[dict[str, dict[str, float]]]) -> None:
    """Print the bounds (per seed when several): what any method could reach from these labels."""
    titles = (("placement", "placement"), ("pieces", "placement by piece"), ("linked", "perfect answers"))
    for name, title in titles:
        aris = " ".join(f"{b[name]['ari']:.2f}" for b in bounds)
        bcubed = " ".join(f"{b[name]['bcubed_f1']:.2f}" for b in bounds)
        line(f"  bound, {title}: ARI | B-cubed", f"{aris} | {bcubed}", "(aggregation.oracle)")


def partner_line(pairs: pd.DataFrame) -> None:
    """How each class and its partner (where workers' mistakes go) were told apart, over all seeds.

    The Kesten-Stigum ratio (`aggregation.partners`): under 1, the labels hold next to nothing of the
    cut between the two; the ARI inside a pair is about 0 when the model merged or miscut it.
    """
    ks, cut = pairs["ks"], pairs["cut_ari"]
    line(
        "  partner pairs: KS ratio | ARI inside the pair",
        f"{ks.median():.1f} ({ks.min():.1f}-{ks.max():.1f}), {(ks < 1).sum()} under 1 | "
        f"{cut.median():.2f}, {(cut < 0.4).sum()}/{len(cut)} under 0.4",
        "(aggregation.partners)",
    )


def bench_small(tmp: Path) -> None:
    print("N=82, K=8, seed design (HIT 10, overlap 7, default crowd)")
    crowd = generate_crowd(82, 8, seed=0)
    crowd.write_export(tmp / "e82.tsv")
    crowd.write_truth(tmp / "t82.csv")
    cache = tmp / "numba-cache"
    env = {"NUMBA_CACHE_DIR": str(cache)}
    cold = run_cli([tmp / "e82.tsv", "-o", tmp / "c82.csv"], env)
    warm = [run_cli([tmp / "e82.tsv", "-o", tmp / "c82.csv"], env) for _ in range(5)]
    line("whole process, cold numba cache (wall / CPU s)", f"{cold[0]:.2f} / {cold[3]:.2f}")
    wall, cpu = statistics.median(w[0] for w in warm), statistics.median(w[3] for w in warm)
    line("whole process, warm cache (wall / CPU s, median 5)", f"{wall:.2f} / {cpu:.2f}", "target <= 1.5")
    line("  best of 5 (wall / CPU s), load average", f"{min(w[0] for w in warm):.2f} / "
         f"{min(w[3] for w in warm):.2f}, {os.getloadavg()[0]:.2f}")  # fmt: skip
    aris, times, ks, base, bounds = [], [], [], [], []
    for seed in range(5):
        crowd = generate_crowd(82, 8, seed=seed)
        fit(CrowdClustering(random_state=seed), crowd)  # warm-up (JIT loaded)
        seconds, ari, k = min(
            (fit(CrowdClustering(random_state=seed), crowd) for _ in range(3)), key=lambda r: r[0]
        )
        aris.append(ari)
        times.append(seconds)
        ks.append(k)
        base.append(fit(CoAssociationClustering(n_clusters=8), crowd)[1])
        bounds.append(oracles(crowd.labels, crowd.truth))
    line("in-process fit (s, median over seeds)", f"{statistics.median(times):.3f}")
    line("ARI per seed", " ".join(f"{a:.3f}" for a in aris))
    line("ARI median over 5 seeds", f"{statistics.median(aris):.3f}  (K found {ks})", "target >= 0.95")
    line("co-association at true K, ARI median", f"{statistics.median(base):.3f}")
    oracle_line(bounds)


SHAPE_RUNS = [
    ("queries", "queries M=3 (342 items, 6 classes)", {"hit_size": 3}),
    ("queries", "queries M=5 (342 items, 6 classes)", {"hit_size": 5}),
    ("large-hits", "35-image HITs (765 items, 13 classes)", {"n_classes": 13, "hit_size": 35}),
    ("large-hits", "35-image HITs (765 items, 20 classes)", {"n_classes": 20, "hit_size": 35}),
    ("uneven", "uneven classes (600 items, 10 classes, ratio 60)", {}),
    ("shoes", "shoes design (500 items, 20 classes)", {}),
    ("shoes", "shoes design, 10% of the images between two styles", {"between_share": 0.1}),
]


def bench_shapes(seeds: list[int] | range = range(3)) -> None:
    print(
        f"Synthetic crowd shapes, seeds {' '.join(map(str, seeds))}: clusters found / true, "
        "ARI model vs co-association at true K"
    )
    for shape, title, overrides in SHAPE_RUNS:
        found, singles, model, base, seconds, bounds, calibration, partners = [], [], [], [], [], [], [], []
        for seed in seeds:
            crowd = crowd_shape(shape, seed=seed, **overrides)
            true_k = crowd.truth.nunique()
            estimator = CrowdClustering(random_state=seed)
            fit_s, ari, k = fit(estimator, crowd)
            found.append(f"{k}/{true_k}")
            singles.append(str(single_item_clusters(estimator.labels_)))
            model.append(ari)
            seconds.append(fit_s)
            calibration.append(calibration_of(estimator, crowd))
            partners.append(partner_signal(crowd, estimator.labels_))
            base.append(fit(CoAssociationClustering(n_clusters=true_k), crowd)[1])
            bounds.append(oracles(crowd.labels, crowd.truth))
        line(title, " ".join(found), "target ±25%")
        line("  of them single items", " ".join(singles))
        line(
            "  ARI model | baseline",
            " ".join(f"{a:.2f}" for a in model) + " | " + " ".join(f"{b:.2f}" for b in base),
        )
        oracle_line(bounds)
        partner_line(pd.concat(partners))
        medians = (statistics.median(column) for column in zip(*calibration, strict=True))
        brier, resampled_brier, final_brier, loss, resampled_loss, final_loss = medians
        line(
            "  confidence: Brier, log loss (median)",
            f"{brier:.3f} -> {resampled_brier:.3f} -> {final_brier:.3f}, "
            f"{loss:.3f} -> {resampled_loss:.3f} -> {final_loss:.3f}",
            "conditional -> resampled -> x piece share",
        )
        line("  fit seconds (max)", f"{max(seconds):.1f}")


DISSENT_RUNS = [
    ("60% sort by colour, 40% by style (500 items, 10 styles)", generate_crowd,
     {"n_items": 500, "n_classes": 10, "shares": {"diligent": 0.4, "colour": 0.6}}),
    ("the default mix: 10% colour (500 items, 20 styles)", crowd_shape, {"name": "shoes"}),
    ("35-image HITs, 12 workers (765 items, 13 classes)", crowd_shape,
     {"name": "large-hits", "n_classes": 13}),
    ("40% spammers (500 items, 10 styles)", generate_crowd,
     {"n_items": 500, "n_classes": 10, "spammer_share": 0.4, "shares": {"diligent": 1.0}}),
    ("30% careless (500 items, 10 styles)", generate_crowd,
     {"n_items": 500, "n_classes": 10, "shares": {"diligent": 0.7, "careless": 0.3}}),
    ("queries M=5 (one answer per query)", crowd_shape, {"name": "queries", "hit_size": 5}),
]  # fmt: skip


def bench_dissent(seeds: list[int] | range = range(3)) -> None:
    """Camps of workers who agree on another grouping (`aggregation.dissent`): who is in them."""
    print(
        f"Dissenting camps, seeds {' '.join(map(str, seeds))}: the camp's workers by their true type | "
        "ARI of its grouping with the truth"
    )
    for title, make, arguments in DISSENT_RUNS:
        found, seconds = [], []
        for seed in seeds:
            crowd = make(seed=seed, **arguments)
            model = CrowdClustering(random_state=seed, embedding_max_items=0).fit(crowd.labels)
            started = time.perf_counter()
            dissent = find_dissent(model, crowd.labels)
            seconds.append(time.perf_counter() - started)
            if dissent is None:
                found.append("none")
                continue
            types = crowd.workers["type"].reindex(list(dissent.workers)).value_counts()
            who = "+".join(f"{n} {kind}" for kind, n in types.sort_index().items())
            ari = clustering_scores(dissent.clusters, crowd.truth)["ari"]
            found.append(f"{who} | {round(ari, 2) + 0.0:.2f}")  # + 0.0: no "-0.00"
        line(title, "; ".join(found))
        line("  seconds (max)", f"{max(seconds):.2f}")


def bench_spammers() -> None:
    print("30% spammers, N=200, K=10, seed design")
    model, oracle, auto = [], [], []
    for seed in range(5):
        crowd = generate_crowd(200, 10, seed=seed, spammer_share=0.3)
        model.append(fit(CrowdClustering(random_state=seed), crowd)[1])
        oracle.append(fit(CoAssociationClustering(n_clusters=10), crowd)[1])
        auto.append(fit(CoAssociationClustering(), crowd)[1])
    line("model ARI per seed", " ".join(f"{a:.3f}" for a in model))
    line("co-association at true K, per seed", " ".join(f"{a:.3f}" for a in oracle))
    line("co-association automatic K, per seed", " ".join(f"{a:.3f}" for a in auto))
    line(
        "medians model / oracle / auto",
        f"{statistics.median(model):.3f} / {statistics.median(oracle):.3f} / {statistics.median(auto):.3f}",
        "target: model best",
    )


def bench_determinism(tmp: Path) -> None:
    print("Determinism: two processes, PYTHONHASHSEED 1 / 987 and NUMBA_NUM_THREADS 2 / 1, N=4,000")
    crowd = generate_crowd(4000, 30, seed=42)  # above the embedding's and the mixture's size limits
    crowd.write_export(tmp / "e4k.tsv")
    for hashseed, threads in (("1", "2"), ("987", "1")):
        run_cli(
            [tmp / "e4k.tsv", "-o", tmp / f"d{hashseed}.csv", "--seed", "7"],
            {"PYTHONHASHSEED": hashseed, "NUMBA_NUM_THREADS": threads},
        )
    same = (tmp / "d1.csv").read_bytes() == (tmp / "d987.csv").read_bytes()
    line("identical item,cluster,confidence files", str(same), "target True")


def bench_large(tmp: Path, n_items: int, n_classes: int, seed: int = 0, hits_per_item: int = 10) -> None:
    shoes = design_information(n_items, n_classes, 10, 10, 7)
    info = design_information(n_items, n_classes, 10, hits_per_item, 7)
    print(
        f"N={n_items:,}, K={n_classes}, seed {seed}, seed design (HIT 10, {hits_per_item} HITs per image, "
        f"overlap 7, uneven styles, ~10% spammers; {info.assignments / shoes.assignments:.1f}x the shoes "
        "design's answers)"
    )
    big = n_items > 20_000
    started = time.perf_counter()
    crowd = generate_crowd(n_items, n_classes, seed=seed, hits_per_item=hits_per_item)
    crowd.write_export(tmp / f"e{n_items}.tsv")
    crowd.write_truth(tmp / f"t{n_items}.csv")
    line("generate + write export (s, not timed below)", f"{time.perf_counter() - started:.1f}")
    line(
        "design: same-style partners per image, none (%)",
        f"{info.same_style_partners:.2f}, {info.alone_share:.0%}",
        f"(aggregation.design; {info.linked_share:.0%} in a style's largest linked piece)",
    )
    line("design: what aggregating it takes", info.aggregation_cost(), "(estimate; peak RSS below)")
    bound = oracles(crowd.labels, crowd.truth)
    recheck = tmp / f"r{n_items}.csv"
    wall, rss, out, cpu = run_cli(
        [tmp / f"e{n_items}.tsv", "-o", tmp / f"c{n_items}.csv", "--truth", tmp / f"t{n_items}.csv",
         "--recheck-output", recheck]
    )  # fmt: skip
    stats = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    line("labels", stats["labels"].split(None, 1)[1])
    line("whole process (wall / CPU s)", f"{wall:.1f} / {cpu:.1f}", "target <= " + ("300" if big else "20"))
    line("peak RSS (MB)", f"{rss:.0f}", "target <= " + ("8192" if big else "1024"))
    found = f"{stats['clusters'].split()[1]} clusters of {n_classes}"
    line("ARI", f"{ari_of(out):.3f}  ({found})", "target >= 0.97, clusters ±10%")
    bcubed = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("bcubed_f1")))
    precision = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("bcubed_precision")))
    line("B-cubed F1 (precision)", f"{bcubed:.3f} ({precision:.3f})", "target >= 0.95")
    line("items with confidence < 0.5", stats["uncertain"].split()[1])
    written = pd.read_csv(tmp / f"c{n_items}.csv")
    set_apart_line("  those set apart, each alone", written, crowd.truth, written["confidence"] < 0.5)
    listed = written["item"].isin(pd.read_csv(recheck)["item"])
    set_apart_line("  the recheck list set apart instead", written, crowd.truth, listed)
    singles = stats["clusters"].split("(")[1].split()[0] if "(" in stats["clusters"] else "0"
    line("clusters of a single item", singles)
    line("dissent", stats["dissent"].split(None, 1)[1])
    line("recheck", stats["recheck"].split(None, 1)[1])
    oracle_line([bound])
    bench_second_round(tmp, crowd, recheck, seed, n_classes)
    del crowd
    print(f"  load average after the run: {os.getloadavg()[0]:.2f}")
    if big or seed != 0 or hits_per_item != 10:
        return
    args = [
        tmp / f"e{n_items}.tsv",
        "-o",
        tmp / f"b{n_items}.csv",
        "--method",
        "coassociation",
        "--truth",
        tmp / f"t{n_items}.csv",
    ]
    wall, rss, out, cpu = run_cli(args)
    fit_s = next(ln for ln in out.splitlines() if ln.startswith("seconds")).split("fit ")[1].rstrip(")")
    line("co-association: whole process / fit (s)", f"{wall:.1f} / {fit_s}", "target fit <= 30")
    line("co-association: peak RSS (MB), ARI", f"{rss:.0f}, {ari_of(out):.3f}")


def bench_second_round(tmp: Path, crowd, recheck: Path, seed: int, n_classes: int) -> None:
    """The images `--recheck-output` listed, shown again with anchors (`followup.plan`, same design, new
    workers), and both rounds' exports aggregated together."""
    listed = pd.read_csv(recheck)
    if len(listed) < 10:
        line("second round", f"not run: {len(listed)} images to show again")
        return
    n = len(crowd.truth)
    clusters = pd.read_csv(tmp / f"c{n}.csv").set_index("item")["cluster"]
    hits = followup.plan(listed, clusters, hit_size=10, hits_per_item=10, seed=seed)
    shown = sorted({x for hit in hits for x in hit})
    second = followup_crowd(crowd, shown, seed=1000 + seed, hits=hits)
    second.write_export(tmp / "second.tsv")
    wall, rss, out, cpu = run_cli(
        [tmp / f"e{n}.tsv", tmp / "second.tsv", "-o", tmp / "c2.csv", "--truth", tmp / f"t{n}.csv"]
    )
    stats = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    added = second.export.shape[0] / crowd.export.shape[0]
    line(
        "second round over them (answers)",
        f"{len(listed):,} images, +{second.export.shape[0]:,} answers (+{added:.0%})",
        "(followup.plan: 2 anchors per HIT; followup_crowd: new workers)",
    )
    bcubed = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("bcubed_f1")))
    found = f"{stats['clusters'].split()[1]} clusters of {n_classes}"
    line("  both rounds: ARI, B-cubed F1", f"{ari_of(out):.3f}, {bcubed:.3f}  ({found})", "targets as above")
    line("  both rounds: whole process (wall / CPU s), RSS (MB)", f"{wall:.1f} / {cpu:.1f}, {rss:.0f}")
    line("  both rounds: recheck", stats["recheck"].split(None, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the large catalogue")
    parser.add_argument("--only-large", action="store_true", help="only the large catalogue")
    parser.add_argument("--only-shapes", action="store_true", help="only the synthetic crowd shapes")
    parser.add_argument(
        "--shape-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the shapes (default: 0 1 2)"
    )
    parser.add_argument(
        "--scale", type=int, default=10_000, help="items of the large catalogue (100000: 200 styles)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds of the large catalogue (default: 0)"
    )
    parser.add_argument(
        "--hits-per-item",
        type=int,
        default=10,
        help="HITs per image of the large catalogue (10: the shoes design; see aggregation.design)",
    )
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if args.only_shapes:
            bench_shapes(args.shape_seeds)
            bench_dissent(args.shape_seeds)
            return
        if args.scale <= 10_000 and not args.only_large:
            bench_small(tmp)
            bench_shapes(args.shape_seeds)
            bench_dissent(args.shape_seeds)
            bench_spammers()
            bench_determinism(tmp)
        if not args.quick:
            for seed in args.seeds:
                classes = 40 if args.scale <= 10_000 else 200
                bench_large(tmp, args.scale, classes, seed, args.hits_per_item)
    print(
        f"bench peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
