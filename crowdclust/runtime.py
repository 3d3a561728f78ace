"""Process set-up shared by `crowdclust run` and `make demo`: a project-local Prefect home.

Must run before `prefect` is imported: Prefect reads these settings at import time. Only defaults
are set (an exported PREFECT_API_URL or PREFECT_HOME wins), so a real server is used when configured.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def prepare_prefect_env() -> None:
    """Project-local PREFECT_HOME, no telemetry, a patient ephemeral-server start-up (fresh machines)."""
    os.environ.setdefault("PREFECT_HOME", str(REPO_ROOT / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")


def describe(summary: dict) -> str:
    """The few lines a person wants after a run."""
    cost = summary.get("cost") or {}

    def num(value: object, spec: str = ".3f") -> str:
        return "n/a" if value is None else format(value, spec)

    sizes = list((summary.get("cluster_sizes") or {}).values())
    return "\n".join(
        [
            f"clusters:           {summary.get('clusters')} (sizes {sizes})",
            f"ARI / NMI vs truth: {num(summary.get('ari'))} / {num(summary.get('nmi'))}",
            f"intruder accuracy:  {num(summary.get('intruder_accuracy'))}",
            f"cost:               ${num(cost.get('spent'), '.2f')} spent"
            + (f" (estimate ${cost['estimate']['total']:.2f})" if cost.get("estimate") else ""),
            f"wall time:          {num(summary.get('wall_seconds'), '.1f')} s (flow)",
            f"report:             {summary.get('report')}",
            f"summary:            {summary.get('summary')}",
        ]
    )
