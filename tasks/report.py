"""The run's human-facing output: `report.html`, `summary.json` and Prefect artifacts.

Only public facts go here: ids, counts, metrics, costs, image URLs. Never the token.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

GALLERY_LIMIT = 60  # images shown per cluster in the HTML report


def summary(
    *,
    clusters: pd.Series,
    metrics: dict[str, Any] | None,
    intruders: dict[str, Any] | None,
    cost: dict[str, Any],
    wall_seconds: float,
    report_path: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The machine-readable summary (keys documented in README: clusters, ari, nmi, ...)."""
    return {
        "clusters": int(clusters.nunique()),
        "ari": metrics.get("ari") if metrics else None,
        "nmi": metrics.get("nmi") if metrics else None,
        "intruder_accuracy": intruders.get("accuracy") if intruders else None,
        "cost": cost,
        "wall_seconds": round(wall_seconds, 1),
        "report": str(report_path),
        "cluster_sizes": {str(k): int(v) for k, v in clusters.value_counts().sort_index().items()},
        "metrics": metrics,
        "intruders": intruders,
        **extra,
    }


def inline_images(urls: list[str], base_url: str, max_bytes: int = 300_000) -> dict[str, str]:
    """URL -> `data:` URI, fetched through `base_url` (the local emulator, which stops after the run).

    Demo image URLs name the emulator's default address; the report must still show them once the
    emulator is gone, so they are embedded. An image that cannot be fetched keeps its URL.
    """
    from urllib.parse import urlsplit

    import httpx

    out: dict[str, str] = {}
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=5.0) as client:
        for url in urls:
            parts = urlsplit(url)
            try:
                response = client.get(parts.path + (f"?{parts.query}" if parts.query else ""))
            except httpx.HTTPError:
                continue
            kind = response.headers.get("content-type", "")
            if (
                response.status_code == 200
                and kind.startswith("image/")
                and len(response.content) <= max_bytes
            ):
                out[url] = f"data:{kind};base64,{base64.b64encode(response.content).decode()}"
    return out


def shown_images(clusters: pd.Series) -> list[str]:
    """The images the HTML galleries show (at most GALLERY_LIMIT per cluster)."""
    return [
        item
        for _, items in clusters.groupby(clusters)
        for item in sorted(map(str, items.index))[:GALLERY_LIMIT]
    ]


def _table(rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return "–" if value is None else str(value)


def render_html(
    data: dict[str, Any],
    clusters: pd.Series,
    truth: pd.Series | None,
    chart: str | None,
    title: str,
    sources: dict[str, str] | None = None,
) -> str:
    """A self-contained page (images are referenced by URL): metrics, cost, timings, chart, galleries."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}.g{display:flex;flex-wrap:wrap;gap:6px}"
        ".g figure{margin:0;width:110px;font-size:11px;text-align:center}.g img{width:104px;height:78px;"
        "object-fit:contain;border:1px solid #ddd}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _table(
            {
                k: data.get(k)
                for k in ("clusters", "ari", "nmi", "intruder_accuracy", "wall_seconds", "run_key")
            }
        ),
    ]
    if data.get("metrics"):
        parts += ["<h2>Agreement with the truth</h2>", _table(data["metrics"])]
    parts += ["<h2>Cost (USD)</h2>", _table(data.get("cost", {}))]
    if data.get("timings"):
        parts += ["<h2>Timings (s)</h2>", _table(data["timings"])]
    if data.get("coverage"):
        parts += ["<h2>HIT plan</h2>", _table(data["coverage"])]
    intr = data.get("intruders")
    if intr:
        parts.append("<h2>Intruder evaluation</h2>")
        if chart:
            parts.append(f"<img src='{html.escape(chart)}' alt='intruder accuracy per cluster'>")
        rows = {
            f"cluster {d['cluster']}": f"{d['accuracy']:.2f} ({d['hits']} HITs)"
            for d in intr.get("per_cluster", [])
        }
        rows["skipped (too small)"] = intr.get("skipped")
        parts.append(_table(rows))
    parts.append("<h2>Clusters</h2>")
    for cluster, items in clusters.groupby(clusters):
        members = sorted(str(i) for i in items.index)
        parts.append(f"<h3>Cluster {cluster} ({len(members)} images)</h3><div class='g'>")
        for item in members[:GALLERY_LIMIT]:
            caption = html.escape(str(truth.get(item, ""))) if truth is not None else ""
            src = html.escape((sources or {}).get(item, item))
            figure = f"<img src='{src}' title='{html.escape(item)}'><figcaption>{caption}</figcaption>"
            parts.append(f"<figure>{figure}</figure>")
        if len(members) > GALLERY_LIMIT:
            parts.append(f"<p>… and {len(members) - GALLERY_LIMIT} more (see clusters.csv)</p>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def gallery_markdown(clusters: pd.Series, per_cluster: int = 12) -> str:
    """Markdown galleries for the Prefect UI (a few images per cluster)."""
    lines = ["# Clusters", ""]
    for cluster, items in clusters.groupby(clusters):
        members = sorted(str(i) for i in items.index)
        lines.append(f"## Cluster {cluster} ({len(members)} images)")
        lines.append(" ".join(f"![]({url})" for url in members[:per_cluster]))
        lines.append("")
    return "\n".join(lines)


def write_outputs(
    run_dir: Path,
    data: dict[str, Any],
    clusters: pd.Series,
    truth: pd.Series | None,
    chart: Path | None,
    title: str,
    sources: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write report.html and summary.json into the run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    report = run_dir / "report.html"
    report.write_text(render_html(data, clusters, truth, chart.name if chart else None, title, sources))
    path = run_dir / "summary.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return report, path


def publish_artifacts(data: dict[str, Any], clusters: pd.Series, report: Path) -> None:
    """Prefect artifacts: galleries, metrics and cost tables, intruder table, a link to the report."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    create_markdown_artifact(
        key="cluster-galleries", markdown=gallery_markdown(clusters), description="clusters"
    )
    rows = [{"metric": k, "value": v} for k, v in (data.get("metrics") or {}).items()]
    rows += [{"metric": f"cost_{k}", "value": v} for k, v in data.get("cost", {}).items()]
    rows.append({"metric": "intruder_accuracy", "value": data.get("intruder_accuracy")})
    create_table_artifact(key="run-metrics", table=rows, description="metrics and cost")
    if data.get("intruders") and data["intruders"].get("per_cluster"):
        create_table_artifact(key="intruder-accuracy", table=data["intruders"]["per_cluster"])
    create_link_artifact(key="run-report", link=report.resolve().as_uri(), link_text=str(report))


def finish_run(
    params: Any,
    aggregated: dict[str, Any],
    evaluated: dict[str, Any] | None,
    cost: dict[str, Any],
    wall_seconds: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The common end of a run (pipeline or catalogue round): summary, report.html, artifacts.

    `params` is the run's `PipelineParams`; images are embedded when they come from the local
    emulator, which may be gone by the time someone opens the report.
    """
    from tasks.connect import endpoint

    run_dir = params.run_dir
    clusters = aggregated["clusters"]
    data = summary(
        clusters=clusters,
        metrics=aggregated["metrics"],
        intruders=evaluated,
        cost=cost,
        wall_seconds=wall_seconds,
        report_path=run_dir / "report.html",
        extra={**extra, "summary": str(run_dir / "summary.json")},
    )
    sources = None
    if params.toloka.environment == "local":
        sources = inline_images(shown_images(clusters), endpoint(params.toloka))
    chart = run_dir / "intruders.png" if evaluated and evaluated.get("chart") else None
    report_path, _ = write_outputs(
        run_dir, data, clusters, aggregated["truth"], chart, f"crowdclust: {params.name}", sources
    )
    publish_artifacts(data, clusters, report_path)
    return data
