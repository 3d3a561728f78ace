"""Flow-run names that say whose run it is: the run key (the catalogue key for a catalogue).

Prefect names a run `adjective-animal` by default, so a team's Runs page (a top-level run and its
sub-flows, times every teammate) could not be read by key without opening each run.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from prefect.utilities.names import generate_slug

from tasks.params import PipelineParams

CATALOGUE_FLOW = "crowdclust-catalogue"  # keyed by the catalogue key, not the content-derived run key


def run_key_of(flow_name: str, raw: object) -> str:
    """The key a flow run of `flow_name` with parameter `params` = `raw` runs under."""
    params = raw if isinstance(raw, PipelineParams) else PipelineParams.model_validate(raw)
    return params.catalogue_key if flow_name == CATALOGUE_FLOW else params.resolved_run_key


# Names nobody gave: the server's two words (`ambitious-woodpecker`, when a run is created without
# a name: `prefect deployment run`, the API), and what the UI's run form fills its Run Name field
# with (Prefect 3.9's UI: a Greek letter, perhaps with a number, a star or constellation, perhaps a
# noun or letter: `theta6-firiendfeld-anomaly`, `mu6-cheron-a`). Read as given, the form's made a
# run of that form `theta6-firiendfeld-anomaly (formrun-48deb3ff37-s0)` on the Runs page. Any other
# name was given: the server's two words are told by its own word lists (coolname's adjective and
# animal, `prefect.utilities.names.generate_slug`), so that a name typed as two words, `alice-rerun`
# or `lead-tmo`, is kept (any two lowercase words used to read as the server's and were dropped).
GREEK = (
    "alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|xi|omicron|pi|rho|sigma|tau"
    "|upsilon|phi|chi|psi|omega"
)
FORM_GENERATED = re.compile(rf"(?:{GREEK})[0-9]*(?:-[a-z]+)+")
TWO_WORDS = re.compile(r"(?P<first>[a-z]+)-(?P<second>[a-z]+)")


def _single_words(config: dict[str, Any], name: str) -> set[str]:
    """The one-word entries of coolname's list `name` and of the lists it nests."""
    entry = config[name]
    if entry["type"] == "nested":
        return set().union(*(_single_words(config, nested) for nested in entry["lists"]))
    if entry["type"] == "words":
        return set(entry["words"])
    if entry["type"] == "const":
        return {entry["value"]}
    return set()  # phrases: more than one word, never `[a-z]+`


@functools.cache
def server_words() -> tuple[frozenset[str], frozenset[str]] | None:
    """The words the server's two-word names take first and second (None: coolname is laid out
    otherwise than in 5.0, and any two words read as the server's, as they used to)."""
    try:
        from coolname.data import config

        (pair,) = config["2"]["lists"]
        first, second = config[pair]["lists"]
        return frozenset(_single_words(config, first)), frozenset(_single_words(config, second))
    except Exception:
        return None


def generated(given: str) -> bool:
    """Whether `given` is a name the server or the run form made up, not one someone typed."""
    if FORM_GENERATED.fullmatch(given):
        return True
    if not (pair := TWO_WORDS.fullmatch(given)):
        return False
    words = server_words()
    return words is None or (pair["first"] in words[0] and pair["second"] in words[1])


def derived_keys(raw: object) -> re.Pattern[str] | None:
    """The run keys a Retry of a run with parameter `params` = `raw` may have been named after:
    every derived key of its name and seed (the dataset on disk may change between attempts).
    None for an explicit key or a catalogue's, which a Retry cannot change."""
    params = raw if isinstance(raw, PipelineParams) else PipelineParams.model_validate(raw)
    if params.run_key:
        return None
    return re.compile(rf"{re.escape(params.name)}-[0-9a-f]{{10}}-s{params.seed}")


# A name this module gave: `<given> (<key>)`.
SUFFIXED = re.compile(r"(?P<given>.*) \((?P<key>[^()]*)\)")


def named(given: str, key: str, earlier: re.Pattern[str] | None = None) -> str:
    """The run's name: the run key, after a name someone gave it (`bob-try-by-hand (bob1)`).

    `earlier`: the keys an earlier attempt of this run may have named it after (`derived_keys`). A
    Retry after the dataset changed runs under another derived key: it renames the run after that
    key, where it used to read the earlier key as a name someone gave (`demo-aaa-s0 (demo-bbb-s0)`,
    and after the dataset was put back `demo-aaa-s0 (demo-bbb-s0) (demo-aaa-s0)`).
    """
    if earlier is not None:
        if earlier.fullmatch(given):
            given = ""
        elif (suffixed := SUFFIXED.fullmatch(given)) and earlier.fullmatch(suffixed["key"]):
            given = suffixed["given"]
    if not given or generated(given) or given == key:
        return key
    return given if given.endswith(f"({key})") else f"{given} ({key})"  # a Retry names it again


def by_run_key() -> str:
    """`flow_run_name` of the flows that take `params`: the run key (after a name given in the run
    form, which it used to replace), else Prefect's usual slug.

    Never raises: a name is not worth failing a run for (a dataset that cannot be read fails it
    in its first stage, with the reason).
    """
    from prefect.runtime import flow_run

    raw = flow_run.parameters.get("params")
    try:
        key = run_key_of(flow_run.flow_name, raw)
        earlier = None if flow_run.flow_name == CATALOGUE_FLOW else derived_keys(raw)
    except Exception:
        return flow_run.name or generate_slug(2)
    return named(flow_run.name or "", key, earlier)


def folder_run_name(folder: Path) -> str:
    """The name of an aggregation writing `folder`: its name, and the run key whose files it holds
    when the name does not say it.

    `runs/<name>/` belongs to the derived key that first wrote it (its `run_key.txt`), so its
    aggregation is named `<name> (<key>)`: named `<name>` alone, the seed-0 run's aggregation could
    not be told from another seed's (`<name>__<key>`) in the UI.
    """
    from tasks.run_folder import RunFolder

    key = RunFolder(folder).owner()
    return folder.name if not key or key in folder.name else f"{folder.name} ({key})"


def by_run_folder() -> str:
    """`flow_run_name` of the aggregation: the run folder it writes (`shoes__shoes-s35`), which names the
    run key for a pipeline's sub-flow and the output folder for the `reaggregate` deployment."""
    from prefect.runtime import flow_run

    out_dir = flow_run.parameters.get("out_dir")
    folder = Path(str(out_dir)) if out_dir else None
    return folder_run_name(folder) if folder is not None and folder.name else generate_slug(2)


def with_second_round() -> str:
    """`flow_run_name` of the aggregation of a second round with the rounds before it: as
    `by_run_folder`, then what it clusters. It writes the same folder as the first round's
    aggregation, and the `run-overview` table listed two identical `crowdclust-aggregate | <name>`
    rows (the UI's Runs page two runs of one name) that could not be told apart."""
    return f"{by_run_folder()} with the second round"
