"""`crowdclust run CONFIG.yaml [--env local|sandbox|production]`: run the pipeline flow for a config.

Prefect is imported inside the command so the root CLI stays light (`crowdclust aggregate` must not
pay for it).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Env(StrEnum):
    local = "local"
    sandbox = "sandbox"
    production = "production"


def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/demo-shoes/pipeline.yaml.")],
    env: Annotated[
        Env | None,
        typer.Option("--env", help="Toloka environment (overrides the config's toloka.environment)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Toloka/emulator URL (overrides toloka.url).")
    ] = None,
    run_key: Annotated[
        str | None,
        typer.Option("--run-key", help="Tag of the Toloka objects; same key = resume the same objects."),
    ] = None,
) -> None:
    """Run the crowd-clustering flow end to end. The token comes from TOLOKA_TOKEN or a Secret block."""
    from crowdclust.runtime import describe, prepare_prefect_env

    prepare_prefect_env()
    from tasks.params import ConfigError, load_params

    overrides: dict = {}
    if env is not None:
        overrides["toloka"] = {"environment": env.value}
        if env is not Env.local and url is None:
            overrides["toloka"]["url"] = None  # real Toloka: toloka-kit's own endpoint
    if url is not None:
        overrides.setdefault("toloka", {})["url"] = url
    if run_key is not None:
        overrides["run_key"] = run_key
    try:
        params = load_params(config, overrides)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

    from flows.pipeline import crowdclust_pipeline

    try:
        summary = crowdclust_pipeline(params)
    except Exception as error:  # the flow run has the traceback; show the reason and how to resume
        typer.echo(f"error: {type(error).__name__}: {error}", err=True)
        typer.echo("Fix the cause and run the same command again: finished stages are reused.", err=True)
        raise typer.Exit(1) from None
    typer.echo(describe(summary))
