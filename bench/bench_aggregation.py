"""Benchmark of the aggregation core against the targets of issue 2; prints the figures.

    .venv/bin/python bench/bench_aggregation.py            # everything (~5-10 min on 2 cores)
    .venv/bin/python bench/bench_aggregation.py --quick    # skip N = 10,000

Targets (2-core machine): N=82 whole process <= 3 s warm, fit <= 0.1 s, ARI >= 0.95 (median of 5
seeds); N=500/K=20 fit <= 1 s, ARI >= co-association cut at the true K; N=10,000 (K=20) whole process
<= 60 s, peak RSS <= 2 GB, ARI >= 0.8, co-association <= 30 s; with 30% spammers the model beats
the co-association baseline; same output in two processes with different PYTHONHASHSEED.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregation import CoAssociationClustering, CrowdClustering, clustering_scores, generate_crowd  # noqa: E402

CLI = [sys.executable, "-m", "crowdclust.cli", "aggregate"]


def run_cli(args: list, env: dict | None = None) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MB), stdout and CPU seconds (user + sys) of one `crowdclust aggregate`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"crowdclust aggregate failed: {proc.stderr.read()}")
    return wall, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


def ari_of(stdout: str) -> float:
    return float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("ari")))


def fit(model, crowd) -> tuple[float, float, int]:
    started = time.perf_counter()
    clusters = model.fit_predict(crowd.labels)
    return time.perf_counter() - started, clustering_scores(clusters, crowd.truth)["ari"], model.n_clusters_


def line(label: str, value: str, target: str = "") -> None:
    print(f"  {label:<52}{value:<30}{target}")


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
    line("whole process, warm cache (wall / CPU s, median 5)", f"{wall:.2f} / {cpu:.2f}", "target <= 3")
    aris, times, ks, base = [], [], [], []
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
    line("in-process fit (s, median over seeds)", f"{statistics.median(times):.3f}", "target <= 0.1")
    line("ARI per seed", " ".join(f"{a:.3f}" for a in aris))
    line("ARI median over 5 seeds", f"{statistics.median(aris):.3f}  (K found {ks})", "target >= 0.95")
    line("co-association at true K, ARI median", f"{statistics.median(base):.3f}")


def bench_medium() -> None:
    print("N=500, K=20, seed design")
    aris, mix, times, base, auto = [], [], [], [], []
    for seed in range(5):
        crowd = generate_crowd(500, 20, seed=seed)
        fit(CrowdClustering(random_state=seed), crowd)
        model = CrowdClustering(random_state=seed)
        seconds, ari, _ = fit(model, crowd)
        aris.append(ari)
        mix.append(clustering_scores(model.mixture_labels_, crowd.truth)["ari"])
        times.append(seconds)
        base.append(fit(CoAssociationClustering(n_clusters=20), crowd)[1])
        auto.append(fit(CoAssociationClustering(), crowd)[1])
    line("fit (s, median over seeds)", f"{statistics.median(times):.3f}", "target <= 1")
    line("model ARI per seed", " ".join(f"{a:.3f}" for a in aris))
    line(
        "model ARI median",
        f"{statistics.median(aris):.3f}",
        f"target >= oracle {statistics.median(base):.3f}",
    )
    line("  DP mixture on the embedding alone, median", f"{statistics.median(mix):.3f}")
    line("co-association cut at true K (oracle), median", f"{statistics.median(base):.3f}")
    line("co-association, automatic K, median", f"{statistics.median(auto):.3f}")


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
    print("Determinism: two processes, PYTHONHASHSEED 1 and 987, N=500")
    crowd = generate_crowd(500, 20, seed=42)
    crowd.write_export(tmp / "e500.tsv")
    for hashseed in ("1", "987"):
        run_cli(
            [tmp / "e500.tsv", "-o", tmp / f"d{hashseed}.csv", "--seed", "7"], {"PYTHONHASHSEED": hashseed}
        )
    same = (tmp / "d1.csv").read_bytes() == (tmp / "d987.csv").read_bytes()
    line("identical item,cluster files", str(same), "target True")


def bench_large(tmp: Path, n_classes: int) -> None:
    print(f"N=10,000, K={n_classes}, seed design")
    started = time.perf_counter()
    crowd = generate_crowd(10_000, n_classes, seed=0)
    crowd.write_export(tmp / "e10k.tsv")
    crowd.write_truth(tmp / "t10k.csv")
    line("generate + write export (s, not timed below)", f"{time.perf_counter() - started:.1f}")
    del crowd
    wall, rss, out, cpu = run_cli([tmp / "e10k.tsv", "-o", tmp / "c10k.csv", "--truth", tmp / "t10k.csv"])
    stats = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    line("labels", stats["labels"].split(None, 1)[1])
    line("whole process (wall / CPU s)", f"{wall:.1f} / {cpu:.1f}", "target <= 60")
    line("peak RSS (MB)", f"{rss:.0f}", "target <= 2048")
    found = f"{stats['clusters'].split()[1]} clusters, {stats['iterations'].split()[1]} it"
    line("ARI", f"{ari_of(out):.3f}  ({found})", "target >= 0.8")
    args = [
        tmp / "e10k.tsv",
        "-o",
        tmp / "b10k.csv",
        "--method",
        "coassociation",
        "--truth",
        tmp / "t10k.csv",
    ]
    wall, rss, out, cpu = run_cli(args)
    fit_s = next(ln for ln in out.splitlines() if ln.startswith("seconds")).split("fit ")[1].rstrip(")")
    line("co-association: whole process / fit (s)", f"{wall:.1f} / {fit_s}", "target fit <= 30")
    line("co-association: peak RSS (MB), ARI", f"{rss:.0f}, {ari_of(out):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the N = 10,000 case")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        bench_small(tmp)
        bench_medium()
        bench_spammers()
        bench_determinism(tmp)
        if not args.quick:
            bench_large(tmp, 20)
            # K=100 is beyond what the seed design can resolve at this N: an item meets ~90 others,
            # of which ~0.9 are of its class, so a class's pairs do not even form a connected graph.
            bench_large(tmp, 100)
    print(
        f"bench peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
