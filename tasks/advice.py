"""How a user goes on after a warning or a refusal, in the terms of how they started the run.

A run started by `crowdclust run` goes on with the same command; a run of a deployment (the Prefect
UI's Run button, a schedule, `prefect deployment run`) has no command. Its Retry runs the parameters
it was started with, so advice to change a setting and go on means a new run of the deployment under
the same run key there. A UI run's exam warning used to say "raise exam.expected_workers and run the
same command again ..., or stop the run (--close)": a command and a flag the UI has neither of.
"""

from __future__ import annotations


def from_deployment() -> bool:
    """Whether the flow run this code runs in (or its top-level run) belongs to a deployment.

    A deployment's run has a process of its own, started with PREFECT__FLOW_RUN_ID; a run of
    `crowdclust run` never has it, and is told so without asking the API (Prefect's
    `runtime.deployment.id` asks it for a run it knows no deployment of, and the labelling wait
    builds its warnings while the API may be away).
    """
    import os

    if not os.environ.get("PREFECT__FLOW_RUN_ID"):
        return False
    from prefect import runtime

    try:
        return bool(runtime.deployment.id)
    except Exception:  # the advice is a courtesy: with the API away, say the command's
        return False


def run_again() -> str:
    """The way to go on once a setting is changed: `run the same command again`, or from a deployment
    a new run of it under the same run key (a Retry would run the settings it had)."""
    if from_deployment():
        return (
            "run the deployment again with the same run_key and the new settings (a Custom run: a "
            "Retry keeps the old ones)"
        )
    return "run the same command again"


def stop_the_run() -> str:
    """How to stop the run and close its pools: `--close`, or from a deployment Cancel (its hook
    closes the run's pools)."""
    return "cancel the run (its pools are closed)" if from_deployment() else "stop the run (--close)"
