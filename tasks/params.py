"""Parameters of the crowdclust flows: pydantic models, loadable from `configs/*/pipeline.yaml`.

The bottom layer: tasks and flows both import it, it imports nothing of the project. The models
live in an importable module (never `__main__`: cloudpickle would pickle a `__main__` class by value
and cache keys would change from one process to the next). Every flow takes `PipelineParams` as its
parameter, so the Prefect UI renders a documented form from this schema.

No secret is ever a parameter: the Toloka token comes from `TOLOKA_TOKEN` or a Prefect Secret block
(see `tasks.toloka_api`), so it never reaches the flow-run record, task inputs or cached results.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.dataset_file import UTF8_BOM, UTF16_BOMS, iconv_command, image_column
from tasks.settings import Settings

Environment = Literal["local", "sandbox", "production"]


class _Model(BaseModel):
    """Base: unknown keys are errors, so a typo in a YAML file is reported, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


BLOCK_NAME = r"^[a-z0-9-]+$"  # a Prefect block document's name


class TolokaTarget(_Model):
    """Which Toloka to talk to. The token is deliberately not here (it is read inside tasks)."""

    environment: Environment = Field(
        "local",
        description="`local` = the emulator at `url`; `sandbox`/`production` = real Toloka.",
    )
    url: str | None = Field(
        "http://127.0.0.1:8765",
        # Refused by the run form, not 3 failed connections later: `127.0.0.1:8765` without its scheme.
        # Empty is none (toloka-kit's endpoint), as before; the scheme in any case, as httpx takes it
        # (spelled out: the form checks the pattern in the browser, where `(?i)` is not everywhere).
        pattern=r"^$|^[hH][tT][tT][pP][sS]?://[^\s/?#]+\S*$",
        description="API base URL, with its http:// or https://: the emulator for `local` (the local "
        "service deploys its own emulator's address here; a run is sent where this says, so parameters "
        "given in full must name that address); for sandbox/production leave empty (null) to use "
        "toloka-kit's endpoint, or set it to override.",
    )
    token_secret_block: str = Field(
        "toloka-token",
        # In the run form's schema too, so that Prefect refuses such a run before it stores its parameters.
        json_schema_extra={"pattern": BLOCK_NAME},
        description="Name of the Prefect Secret block holding the token, used when TOLOKA_TOKEN is unset "
        "(lowercase letters, digits and dashes, as Prefect names blocks): never the token itself.",
    )

    @field_validator("token_secret_block", mode="after")
    @classmethod
    def _a_block_name(cls, value: str) -> str:
        """A token pasted here (the field reads "token") was a run parameter, in the Prefect database
        and the UI, whenever TOLOKA_TOKEN was set (the block is then never read), and else in the
        `no Toloka token: ... create a Prefect Secret block '<token>'` error. No block can have such a
        name (Prefect's are lowercase letters, digits and dashes); Toloka's tokens have capitals or
        underscores. The config error does not show the value (`_problem`: the name reads "token")."""
        if not re.fullmatch(BLOCK_NAME, value):
            raise ValueError(
                "not a Prefect block name (lowercase letters, digits and dashes): give the name of the "
                "Secret block that holds the token, never the token itself (that goes in TOLOKA_TOKEN, "
                "or `crowdclust token save`)"
            )
        return value

    @field_validator("url", mode="after")
    @classmethod
    def _empty_url_is_none(cls, value: str | None) -> str | None:
        return value or None  # `url: ""` (an emptied form field): toloka-kit's own endpoint

    @model_validator(mode="after")
    def _local_needs_url(self) -> TolokaTarget:
        if self.environment == "local" and not self.url:
            raise ValueError(
                "environment 'local' needs `url` (the emulator address, e.g. http://127.0.0.1:8765)"
            )
        return self


def endpoint(target: TolokaTarget) -> str | None:
    """The URL the client talks to: for `local`, `$CROWDCLUST_LOCAL_URL` wins over `target.url`.

    Not part of the target, so cache keys do not depend on the port of the emulator in use.
    """
    if target.environment == "local":
        return Settings().local_url or target.url
    return target.url


# The seed's range, `aggregation.MAX_SEED` (this module sits below the aggregation: its own copy, a
# test holds the two equal): a negative seed stopped the HIT plan mid-flow on a bare numpy ValueError.
MAX_SEED = 2**64 - 1
MAX_HIT_SIZE = 10  # the grouping interface's colours (configs/*/toloka/*_project.json), one per group
# Toloka's least reward per assignment of a pool (every pool the flows create is a REGULAR one; toloka-kit's
# Pool docs): below it Toloka refuses the pool, which the flow creates only after what comes before it is
# made, and for the intruder pool after the labelling was paid.
MIN_REWARD = 0.005


def _reward_toloka_accepts(value: float) -> float:
    """A reward below Toloka's minimum is refused here, naming the field, rather than by Toloka mid-run.

    Before, `exam.reward: 0` (documented as allowed) passed every check, the run created the exam
    project, training, skill and exam pool, and failed on `Toloka refused a request (400
    VALIDATION_ERROR: Validation failed)`; an `intruders.reward` below it failed only after the
    labelling was paid.
    """
    if value < MIN_REWARD:
        raise ValueError(
            f"{value:g} is below ${MIN_REWARD}, the least reward per assignment Toloka accepts for a "
            f"pool: it would refuse the pool mid-run; use {MIN_REWARD} or more"
        )
    return value


# A pool's reward per assignment, USD: the config error names the field (pydantic's location); the
# minimum is in the JSON schema too, so the Prefect UI's run form shows it.
Reward = Annotated[
    float, Field(json_schema_extra={"minimum": MIN_REWARD}), AfterValidator(_reward_toloka_accepts)
]


class HitParams(_Model):
    """How images are packed into grouping HITs (task suites of the main pool)."""

    size: int = Field(
        10,
        ge=2,
        json_schema_extra={"maximum": MAX_HIT_SIZE},
        description="Images per HIT (the interface offers 10 colours).",
    )
    overlap: int = Field(7, ge=1, description="Workers per HIT (main pool overlap).")
    hits_per_item: int = Field(
        10, ge=1, description="Target number of HITs each image appears in (the seed's `expecting_hits`)."
    )
    design: Literal["balanced", "seed"] = Field(
        "balanced",
        description="`balanced`: every image in the same number of HITs, co-occurrence graph connected; "
        "`seed`: the notebook's scheme (one anchor image per HIT plus random others; at most one HIT "
        "per image, so `hits_per_item` at most `size`).",
    )
    reward: Reward = Field(
        0.02, description="Reward per main-pool assignment, USD (Toloka's least is 0.005)."
    )
    expected_styles: int | None = Field(
        None,
        ge=1,
        description="Roughly how many styles the catalogue holds, if you know. Before anything is paid "
        "the run then checks that the design shows each image enough images of its own style to place "
        "it, and warns with the `hits_per_item` that would (docs/aggregation.md: What a design can tell).",
    )
    second_round_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="A second round: after the first aggregation, the images only the prior placed "
        "(`recheck.csv`) are shown again in a second main pool with the same design, among themselves "
        "plus two anchors per HIT from their clusters, and both rounds are aggregated together; at "
        "most this share of the images, the least confident first (0: no second round). The budget "
        "estimate counts that share. At 10,000 images of 40 styles 25-26% were listed, and the round "
        "(+32-33% answers) took ARI from 0.84 to 0.99. In a growing catalogue each round gets its own.",
    )
    check_images: bool = Field(
        True,
        description="Before anything is paid, fetch every image of the plan and stop (naming them) if "
        "any cannot be shown: an image that does not load is paid for in every HIT it is in and "
        "clustered on answers about a broken picture. False for a host that serves browsers but "
        "refuses this machine.",
    )
    max_overlap: int | None = Field(
        None,
        ge=1,
        description="Most paid answers a HIT may get once the main pool's quality-control rules raised "
        "its overlap (default: `overlap` + what the rules add once). A rule set that can exceed it, or "
        "that can chain (answer-count restriction -> overlap increase), is refused before anything opens.",
    )

    @field_validator("size")
    @classmethod
    def _size_fits_the_colours(cls, value: int) -> int:
        """The reason with the limit: pydantic's `le` said only "less than or equal to 10"."""
        if value > MAX_HIT_SIZE:
            raise ValueError(
                f"{value} images per HIT is more than {MAX_HIT_SIZE}: the task interface offers "
                f"{MAX_HIT_SIZE} colours, one per group, so a worker with more images than colours "
                f"must merge groups; use hits.size {MAX_HIT_SIZE} or less (more HITs per image, "
                "hits.hits_per_item, show each image more of the others)"
            )
        return value

    @model_validator(mode="after")
    def _seed_design_within_its_reach(self) -> HitParams:
        """The seed design makes at most one HIT per image (its anchor, topped up with others), so an
        image is in `size` HITs on average however many `hits_per_item` asks. A try-out asked 8 with
        6-image HITs and got 6 (400 HITs for 400 images), while the design warning before paying
        counted 8 and advised 9, which would have changed nothing."""
        if self.design == "seed" and self.hits_per_item > self.size:
            raise ValueError(
                f"hits_per_item {self.hits_per_item} is more than size {self.size}: the seed design makes "
                "one HIT per image (its anchor) topped up with others, so each image is in "
                f"{self.size} HITs on average at most; use design balanced for more HITs per image, "
                f"or hits_per_item {self.size} or less"
            )
        return self

    @model_validator(mode="after")
    def _max_overlap_covers_overlap(self) -> HitParams:
        if self.max_overlap is not None and self.max_overlap < self.overlap:
            raise ValueError(f"max_overlap {self.max_overlap} is below overlap {self.overlap}")
        return self


class ExamParams(_Model):
    """Training + exam gating of the main pool."""

    n_exams: int = Field(3, ge=1, description="Number of exam suites; the skill is the mean score over them.")
    min_skill: float = Field(75.0, ge=0, le=100, description="Skill a worker needs to enter the main pool.")
    reward: Reward = Field(
        0.01,
        description="Reward per exam assignment, USD (paid only when accepted; Toloka's least is 0.005).",
    )
    expected_workers: int = Field(
        100,
        ge=1,
        description="Exam overlap per suite: how many workers may take each exam (cost bound). It also "
        "bounds how many workers can qualify, and so the answers the main pool can collect: a run whose main "
        "pool needs more than they can give under its answer-count restriction stops before anything opens.",
    )
    pass_share: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Share of the exam's takers expected to reach min_skill, for the staffing check: the "
        "seats qualify only those who pass (on the emulator 74% of 1,400 seats, 27% of 40; set it from your "
        "platform's exam statistics). The run warns once the exam is complete if too few qualified.",
    )
    skill_name: str = Field(
        "Shoes clustering", description="Base name of the skill; the run key is appended."
    )


class WaitParams(_Model):
    """Polling of open pools."""

    poll_seconds: float | None = Field(
        None, gt=0, description="Seconds between polls; default 60 for real Toloka, 1 for the local emulator."
    )
    timeout_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="Give up (and fail the run; the hooks close the pools) after this."
    )
    retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries of a wait interrupted by a network/5xx error before the run fails "
        "(then Retry the run: it resumes polling).",
    )

    def period(self, environment: Environment) -> float:
        """The poll period actually used for `environment`."""
        if self.poll_seconds is not None:
            return self.poll_seconds
        return 1.0 if environment == "local" else 60.0


class BudgetParams(_Model):
    """Money guard, checked before any pool opens."""

    max_spend: float = Field(
        50.0,
        ge=0,
        description="Budget of the run key, USD: refuse to open pools whose estimate exceeds what is left "
        "of it, and close the main pool while waiting before what Toloka charged would exceed it.",
    )
    fee_rate: float = Field(0.3, ge=0, description="Platform fee as a fraction of rewards.")


class AggregationParams(_Model):
    """How partial groupings become one clustering."""

    method: Literal["gomes", "coassociation"] = Field(
        "gomes",
        description="`gomes`: the Bayesian crowd-clustering model (Gomes et al. 2011), as in "
        "`crowdclust aggregate --method`; `coassociation`: the baseline. The old name `crowd` is "
        "read as `gomes`.",
    )
    n_dims: int = Field(4, ge=1, le=16, description="Latent dimensions of the crowd-clustering embedding.")

    @field_validator("method", mode="before")
    @classmethod
    def _old_method_name(cls, value: Any) -> Any:
        """`crowd` was this field's name for `gomes` before the pipeline and the CLI were aligned."""
        return "gomes" if value == "crowd" else value


class IntruderParams(_Model):
    """Intruder evaluation of the clusters by a second crowd."""

    enabled: bool = Field(True, description="Run the intruder evaluation after aggregation.")
    n_hits: int = Field(100, ge=1, description="Number of intruder HITs.")
    images_per_hit: int = Field(8, ge=3, le=8, description="Images per HIT (one of them is the intruder).")
    overlap: int = Field(5, ge=1, description="Workers per intruder HIT.")
    reward: Reward = Field(0.02, description="Reward per intruder assignment, USD (Toloka's least is 0.005).")


class PipelineParams(_Model):
    """Everything one crowd-clustering run needs.

    Relative paths: in a pipeline YAML (`crowdclust run`), `dataset` and `toloka_dir` are relative
    to the YAML file; in a deployment's parameters (the Prefect UI form), relative to the worker's
    working directory, the project folder.
    """

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Run name: its folder is `<runs_dir>/<name>/` (with a `run_key` other than the "
        "default: `<runs_dir>/<name>__<run_key>/`).",
    )
    dataset: Path = Field(
        ...,
        description="TSV with column `image` (URL) and optionally `class` (truth). "
        "A relative path is relative to the project folder (in a YAML file: to that file).",
    )
    toloka_dir: Path = Field(
        ...,
        description="Folder with the Toloka object JSON files (see configs/README.md). A relative path "
        "is relative to the project folder (in a YAML file: to that file).",
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed for every random choice (HIT plan, aggregation, intruder HITs), "
        "from 0 to 2**64 - 1.",
    )
    run_key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Tag of the Toloka objects (default `<name>-<dataset hash>-s<seed>`): "
        "same key, same objects. A key other than the default has its own run folder, "
        "`<runs_dir>/<name>__<run_key>/`.",
    )
    runs_dir: Path = Field(
        Path("runs"),
        description="Where run folders are written; relative to the working directory (the project "
        "folder for `crowdclust run` and the local service, which serves its `runs/` over http).",
    )
    toloka: TolokaTarget = Field(default_factory=TolokaTarget, description="Toloka endpoint.")
    hits: HitParams = Field(default_factory=HitParams, description="HIT design of the main pool.")
    exam: ExamParams = Field(default_factory=ExamParams, description="Exam gating.")
    wait: WaitParams = Field(default_factory=WaitParams, description="Polling.")
    budget: BudgetParams = Field(default_factory=BudgetParams, description="Money guard.")
    aggregation: AggregationParams = Field(default_factory=AggregationParams, description="Aggregation.")
    intruders: IntruderParams = Field(default_factory=IntruderParams, description="Intruder evaluation.")

    @field_validator("dataset", "toloka_dir", "runs_dir", mode="before")
    @classmethod
    def _home(cls, value: Any) -> Any:
        """`~` is the user's home, as in a shell: `runs_dir: ~/crowd-runs` wrote the run folders into a
        folder named `~` in the working directory, where `rm -rf ~/...` would not find them."""
        if isinstance(value, str):  # a string stays one: JSON input (`model_validate_json`) takes no Path
            return str(Path(value).expanduser())
        return value.expanduser() if isinstance(value, Path) else value

    @field_validator("dataset", "toloka_dir")
    @classmethod
    def _path_exists(cls, value: Path, info: ValidationInfo) -> Path:
        exists = value.is_file() if info.field_name == "dataset" else value.is_dir()
        if not exists:
            raise ValueError(f"{'file' if info.field_name == 'dataset' else 'folder'} not found: {value}")
        return value

    @property
    def default_run_key(self) -> str:
        """The run key without `run_key`: name + the dataset's images, in order + seed.

        Only the images: the crowd sees nothing else of the file, and a key of its bytes changed
        with a corrected truth label, so the same command after an interruption started a new key
        and paid the work again (a user's $5.75). A file whose image column cannot be read keys by
        its bytes (the run stops at the dataset check anyway). The images are read as the dataset
        check reads them (`tasks.dataset_file`): a byte-order mark or an `INPUT:image` header made
        this fall back to the bytes, and a corrected label made a new key again.
        """
        images = image_column(self.dataset)
        content = self.dataset.read_bytes() if images is None else "\n".join(images).encode()
        digest = hashlib.sha256(content).hexdigest()[:10]
        return f"{self.name}-{digest}-s{self.seed}"

    @property
    def resolved_run_key(self) -> str:
        """The run key: explicit, or derived from name + the dataset's images + seed."""
        return self.run_key or self.default_run_key

    @property
    def default_catalogue_key(self) -> str:
        """A catalogue's key without `run_key`: name + seed."""
        return f"{self.name}-s{self.seed}"

    @property
    def catalogue_key(self) -> str:
        """Key of a growing catalogue (flows/catalogue.py): explicit, or name + seed, never the content,
        because the content changes with every round while the catalogue's Toloka objects stay."""
        return self.run_key or self.default_catalogue_key

    @property
    def run_dir(self) -> Path:
        """The run folder (`RunFolder.of`): `<runs_dir>/<name>/` for the default key, the pipeline's
        or the catalogue's (the catalogue flow passes its key on as `run_key`), else one of the key's own."""
        key = self.run_key
        if key in (None, "", self.default_catalogue_key) or key == self.default_run_key:
            key = None
        return run_dir_of(self.runs_dir, self.name, key)


RUN_KEY_SEPARATOR = "__"  # never in a run name (`[a-z0-9-]`), so no name's folder is another's


def run_dir_of(runs_dir: Path, name: str, run_key: str | None = None) -> Path:
    """`<runs_dir>/<name>/`, or for a run key other than the default (or the name itself)
    `<runs_dir>/<name>__<run key>/`.

    The one place a run folder's name is formed: runs of one config with different run keys (their
    own Toloka objects, paid for separately) must not overwrite each other's exports and report. A
    name holds no `_`, so `<name>__<key>` is no other name's folder; the key keeps the characters
    `run_key` allows (letters, digits, `.`, `_`, `-`) and any other becomes `_`.
    """
    if not run_key or run_key == name:  # a key that is the name itself (a deployment's) names nothing new
        return runs_dir / name
    return keyed_run_dir(runs_dir, name, run_key)


def keyed_run_dir(runs_dir: Path, name: str, run_key: str) -> Path:
    """`<runs_dir>/<name>__<run key>/`: the folder of a key that is not the default."""
    return runs_dir / f"{name}{RUN_KEY_SEPARATOR}{re.sub(r'[^A-Za-z0-9._-]', '_', run_key)}"


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the YAML's relative `dataset`/`toloka_dir` relative to the YAML file itself (`~` is the
    user's home, as in a shell: `dataset: ~/shoes.tsv` was looked for in `<config folder>/~/`)."""
    out = dict(data)
    for key in ("dataset", "toloka_dir"):
        if isinstance(out.get(key), str) and not Path(out[key]).expanduser().is_absolute():
            out[key] = str((base / out[key]).resolve())
    return out


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ConfigError(ValueError):
    """A pipeline YAML that cannot be turned into parameters; the message names the file and fields."""


def config_text(path: Path, error: type[ValueError] = ConfigError) -> str:
    """The text of a config file (`pipeline.yaml`, a `toloka/*.json`): UTF-8 whatever the locale,
    without the byte-order mark Windows editors start it with. Raises `error` naming the file and the
    first line that is not UTF-8.

    Read in the locale's encoding, a UTF-8 `skill_name: Démo` became the skill `DÃ©mo` on Toloka
    without a word under a Latin-1 locale (`LANG=de_DE.ISO-8859-1`), a dash in a comment was `not
    valid YAML: unacceptable character #x0080`, and under `LC_ALL=C` without Python's UTF-8 mode every
    non-ASCII letter was a traceback; a Latin-1 file was a traceback under a UTF-8 locale, and a JSON
    file saved with a byte-order mark was refused (`Unexpected UTF-8 BOM`).
    """
    data = path.read_bytes()
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        utf16 = data.startswith(UTF16_BOMS)
        source = "UTF-16" if utf16 else "WINDOWS-1252"
        guess = "it starts with a UTF-16 byte-order mark" if utf16 else "Latin-1 or Windows-1252, perhaps"
        raise error(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be UTF-8; {guess}): "
            f"save it as UTF-8, e.g. {iconv_command(source, path)} and use that file"
        ) from None


class RepeatedKeyError(yaml.YAMLError):
    """A mapping of a YAML file names a key twice (`UniqueKeyLoader`); lines are 1-based."""

    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"line {line}: key {key!r} repeats line {first}")
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping naming a key twice.

    PyYAML keeps the last value of a repeated key: `hits:` appended below a `hits:` block would
    silently replace the whole block, its rewards with the defaults. Merge keys (`<<: *anchor`)
    may still be overridden by the mapping's own keys, as YAML intends.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_keys(node)
        return super().construct_document(node)


def _mapping_keys(node: yaml.Node, path: str, seen: set[int]) -> Iterator[tuple[int, yaml.Node, str]]:
    """Every key of every mapping in the tree under `node`, depth first: (its mapping's id, the key's
    node, its dotted path such as `hits.overlap`, `[i]` for a list's items).

    Walks the composed nodes, before any merge key is flattened into them: a merged mapping's keys
    have the path of the mapping that merges them, and their own mapping's id. `seen` stops at
    aliases already visited (an alias may even point at its own ancestor).
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                yield from _mapping_keys(value, path, seen)
                continue
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            where = f"{path}.{name}" if path else name
            yield id(node), key, where
            yield from _mapping_keys(value, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _mapping_keys(item, f"{path}[{index}]", seen)


def _check_keys(node: yaml.Node) -> None:
    """Raise `RepeatedKeyError` for the first key repeated in a mapping of the tree under `node`.

    A key the mapping overrides from `<<` is in another mapping, so it is not taken for a repeat. A
    scalar key counts by its resolved tag and text (`1` and `"1"` are two keys); others never repeat.
    """
    first: dict[tuple[int, str, str], int] = {}
    for mapping, key, where in _mapping_keys(node, "", set()):
        identity = (mapping, key.tag, where)
        if identity in first:
            raise RepeatedKeyError(where, key.start_mark.line + 1, first[identity])
        first[identity] = key.start_mark.line + 1


def read_yaml(path: Path) -> Any:
    """The data of a YAML config file crowdclust owns: safe types only, no key named twice.

    Raises `ConfigError` naming the file, and for a repeated key the lines of both and its path.
    """
    try:
        return yaml.load(config_text(path), Loader=UniqueKeyLoader)  # a SafeLoader: safe types only
    except RepeatedKeyError as exc:
        raise ConfigError(
            f"{path} line {exc.line}: key {exc.key!r} repeats line {exc.first}; "
            "a repeated key would replace the first one's values"
        ) from None
    except yaml.MarkedYAMLError as exc:  # one line: PyYAML's own is five, with a caret under the text
        raise ConfigError(_yaml_error(path, exc)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _yaml_error(path: Path, exc: yaml.MarkedYAMLError) -> str:
    """`FILE, line L, column C: not valid YAML: PROBLEM; CONTEXT`, and for a tab, what to do."""
    mark = exc.problem_mark or exc.context_mark
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = "; ".join(part for part in (exc.problem, exc.context) if part) or "cannot be read"
    tab = "'\\t'" in what  # PyYAML's `found character '\t' that cannot start any token`
    hint = ": indent with spaces, not tabs (YAML takes no tab there)" if tab else ""
    return f"{path}{where}: not valid YAML: {what}{hint}"


def load_params(path: Path | str, overrides: dict[str, Any] | None = None) -> PipelineParams:
    """Read a pipeline YAML into `PipelineParams`; `overrides` (nested dict) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    read = read_yaml(path)
    data = {} if read is None else read
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = _deep_merge(_resolve_paths(data, path.parent), overrides or {})
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as exc:
        if read is None and {err["type"] for err in exc.errors()} == {"missing"}:
            # not three fields "required" of a file saved empty by mistake
            needed = ", ".join(n for n, f in PipelineParams.model_fields.items() if f.is_required())
            raise ConfigError(
                f"{path}: the file holds no settings (it is empty or only comments); a pipeline "
                f"config names at least {needed}, as configs/demo-shoes/pipeline.yaml does"
            ) from exc
        where = _key_lines(path)
        problems = [_problem(err, where, overrides or {}) for err in exc.errors()]
        raise ConfigError(f"{path}: invalid pipeline config: " + "; ".join(problems)) from exc


def _key_lines(path: Path) -> dict[str, int]:
    """Dotted key (`hits.overlap`) -> the line of the YAML file that names it first (1-based)."""
    lines: dict[str, int] = {}
    with contextlib.suppress(yaml.YAMLError, OSError, ConfigError):
        root = yaml.compose(config_text(path), Loader=UniqueKeyLoader)
        for _, key, where in [] if root is None else _mapping_keys(root, "", set()):
            lines.setdefault(where, key.start_mark.line + 1)
    return lines


def _overridden(loc: tuple[Any, ...], overrides: dict[str, Any]) -> bool:
    """Whether the field at `loc` came from the command line rather than the file."""
    node: Any = overrides
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


_SECRET_LIKE = re.compile(r"token|secret|password|passwd|api[_-]?key|credential", re.IGNORECASE)

# What a field's pattern asks, in words: pydantic says `String should match pattern '^$|^[hH][tT]...'`,
# which left a user who gave `--url 127.0.0.1:9101` to find the missing `http://` in a regex.
PATTERN_WORDS = {
    ("toloka", "url"): "must start with http:// or https:// (e.g. http://127.0.0.1:8765), or be empty "
    "for toloka-kit's own endpoint",
    ("run_key",): "may hold only letters, digits, '.', '_' and '-'",
    ("name",): "may hold only lowercase letters, digits and '-', starting with a letter or digit",
}


def _problem(err: Any, where: dict[str, int], overrides: dict[str, Any]) -> str:
    """One field's problem: its dotted name, the reason, and the file's line with the value given.

    The reasons were each on a line of their own below the file's name, without the value or its
    line (`hits.overlap: Input should be a valid integer, unable to parse string as an integer`):
    the one `error:` line every other refusal is said in, and a user left to find `five` by eye.
    """
    loc = tuple(err["loc"])
    name = ".".join(str(part) for part in loc)
    reason = err["msg"].removeprefix("Value error, ")  # a validator's own reason reads better without it
    if err["type"] == "string_pattern_mismatch":
        reason = PATTERN_WORDS.get(loc, reason)
    if err["type"] == "extra_forbidden" and _SECRET_LIKE.search(name):
        reason = (
            "a secret is never part of the config (it would be in every log and in Prefect's run "
            "parameters): set TOLOKA_TOKEN, or save it with `crowdclust token save`"
        )
    line = None if _overridden(loc, overrides) else where.get(name)
    given = err.get("input")
    # An unknown key's value is not needed to fix it, and may be what must never be printed
    # (`toloka: {token: ...}`); nor is a value under a name that reads like a secret's.
    hidden = err["type"] in ("missing", "extra_forbidden") or _SECRET_LIKE.search(name)
    scalar = isinstance(given, str | int | float | bool | list) and not hidden
    shown = repr(given) if scalar else None
    if shown is not None and len(shown) > 60:
        shown = shown[:57] + "..."
    if not name:  # a check of several fields together
        return reason
    if line is None:
        return f"{name}: {reason}" + (f" (given {shown})" if shown else "")
    return f"{name}: {reason} (line {line}" + (f": {shown})" if shown else ")")
