"""Parameters, pipeline YAML, Toloka config bundles and datasets: loading and clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.dataset import DatasetError, load_dataset, read_dataset, truth_of
from tasks.hits import make_plan
from tasks.params import AggregationParams, ConfigError, PipelineParams, load_params
from tasks.preflight import design_warning
from tasks.toloka_config import Placeholders, TolokaConfigError, fill, load_bundle

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo-shoes" / "pipeline.yaml"
SHOES = ROOT / "configs" / "shoes" / "pipeline.yaml"


def test_shipped_configs_load_with_seed_defaults():
    for path in (DEMO, SHOES):
        params = load_params(path)
        assert (params.hits.size, params.hits.overlap, params.hits.reward) == (10, 7, 0.02)
        assert (params.exam.n_exams, params.exam.min_skill) == (3, 75)
        assert (params.intruders.n_hits, params.intruders.images_per_hit, params.intruders.overlap) == (
            100,
            8,
            5,
        )
        bundle = load_bundle(params.toloka_dir)
        assert len(bundle.exam_suites) == 3
        assert params.aggregation.method == "gomes"
    assert load_params(SHOES).wait.period("production") == 60
    assert load_params(DEMO).wait.period("local") <= 1
    assert len(load_dataset(load_params(SHOES).dataset)) == 82


def test_every_field_is_documented():
    def walk(schema: dict, defs: dict) -> None:
        for name, field in schema.get("properties", {}).items():
            assert field.get("description"), f"{schema.get('title')}.{name} has no description"
        for sub in defs.values():
            for name, field in sub.get("properties", {}).items():
                assert field.get("description"), f"{sub.get('title')}.{name} has no description"

    schema = PipelineParams.model_json_schema()
    walk(schema, schema.get("$defs", {}))


def test_run_key_depends_on_name_dataset_and_seed(tmp_path):
    a = load_params(DEMO)
    b = load_params(DEMO, {"seed": 1})
    assert a.resolved_run_key != b.resolved_run_key
    assert a.resolved_run_key == load_params(DEMO).resolved_run_key
    assert load_params(DEMO, {"run_key": "mine"}).resolved_run_key == "mine"
    assert load_params(DEMO, {"name": "other"}).resolved_run_key != a.resolved_run_key
    grown = tmp_path / "dataset.tsv"
    grown.write_text(a.dataset.read_text() + "https://x/one-more.png\tboot\n")
    assert load_params(DEMO, {"dataset": str(grown)}).resolved_run_key != a.resolved_run_key
    # The catalogue key stays when the content grows (its Toloka objects are shared by the rounds).
    assert load_params(DEMO, {"dataset": str(grown)}).catalogue_key == a.catalogue_key


def test_shipped_run_keys_are_pinned():
    """Keys of ordinary files stay what they were: a new key would pay a run's work again."""
    assert load_params(DEMO).resolved_run_key == "demo-shoes-ff082a71c9-s0"
    assert load_params(SHOES).resolved_run_key == "shoes-9af1818557-s0"


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda text: "\ufeff" + text, id="utf-8 byte-order mark"),
        pytest.param(lambda text: text.replace("image\t", "INPUT:image\t", 1), id="INPUT:image header"),
        pytest.param(lambda text: text.replace("\n", "\r\n"), id="CRLF"),
        pytest.param(lambda text: text.replace("\n", "\n\n", 3), id="blank lines"),
        pytest.param(lambda text: text.replace("\tsneakers\t", "\tSNEAKERS\t", 1), id="a truth label"),
    ],
)
def test_run_key_follows_the_images_whatever_the_file_spelling(tmp_path, spelling):
    """A spreadsheet's BOM, the seed's header, line endings or a corrected label keep the key
    (a BOM or `INPUT:image` made it a hash of the whole file: a label fixed, the job paid again)."""
    text = DEMO.with_name("dataset.tsv").read_text()
    path = tmp_path / "dataset.tsv"
    path.write_bytes(spelling(text).encode("utf-8"))
    assert path.read_bytes() != text.encode("utf-8")
    params = load_params(DEMO, {"dataset": str(path)})
    assert params.resolved_run_key == load_params(DEMO).resolved_run_key
    shipped = load_dataset(DEMO.with_name("dataset.tsv"))
    assert load_dataset(path)["image"].tolist() == shipped["image"].tolist()
    # ... and with a BOM, a truth label fixed later keeps it too.
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\tsneakers\t", "\tboots\t", 1).encode("utf-8"))
    assert load_params(DEMO, {"dataset": str(path)}).resolved_run_key == load_params(DEMO).resolved_run_key


def test_a_dataset_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "dataset.tsv"
    path.write_bytes("image\tclass\nhttp://x/a.png\tboot\n".encode("utf-16"))
    with pytest.raises(DatasetError, match=r"dataset.tsv: not UTF-8 text: .* looks like UTF-16"):
        load_dataset(path)
    assert load_params(DEMO, {"dataset": str(path)}).resolved_run_key  # keyed by its bytes, no error


def test_a_workbook_or_a_compressed_file_given_as_the_dataset_is_called_what_it_is(tmp_path):
    """`dataset:` pointed at the workbook (an .xlsx is a zip archive) or at a gzip'd TSV was told
    `not UTF-8 text (... Latin-1 or Windows-1252, perhaps)` and to convert it with iconv."""
    import gzip
    import zipfile

    text = "image\tclass\nhttp://x/a.png\tboot\n"
    workbook = tmp_path / "dataset.xlsx"
    with zipfile.ZipFile(workbook, "w") as archive:
        archive.writestr("xl/worksheets/sheet1.xml", text)
    with pytest.raises(DatasetError, match=r"dataset.xlsx: not text: it is a zip archive \(an .xlsx") as xlsx:
        load_dataset(workbook)
    assert "save the sheet as tab-separated UTF-8 text" in str(xlsx.value) and "iconv" not in str(xlsx.value)
    packed = tmp_path / "dataset.tsv"
    packed.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DatasetError, match=r"dataset.tsv: not text: it is gzip-compressed, .*\(gunzip\)"):
        load_dataset(packed)


def test_a_dataset_with_a_byte_order_mark_keeps_its_truth(tmp_path):
    path = tmp_path / "dataset.tsv"
    path.write_bytes("\ufeffimage\tclass\nhttp://x/a.png\tboot\nhttp://x/b.png\tshoe\n".encode("utf-8"))
    assert truth_of(load_dataset(path)).to_dict() == {"http://x/a.png": "boot", "http://x/b.png": "shoe"}


def test_each_run_key_has_its_own_run_folder_and_the_default_key_keeps_runs_name(tmp_path):
    """A second run of one config with another `--run-key` (other Toloka objects, paid for apart)
    must not overwrite the first one's exports, clusters and report."""
    from tasks.params import run_dir_of
    from tasks.run_folder import RunFolder

    runs = tmp_path / "runs"

    def folder(**changes) -> Path:
        return RunFolder.of(load_params(DEMO, {"runs_dir": str(runs), **changes})).root

    default = load_params(DEMO, {"runs_dir": str(runs)})
    assert folder() == runs / "demo-shoes" == default.run_dir
    assert folder(run_key=default.resolved_run_key) == runs / "demo-shoes"  # the default, spelt out
    assert folder(run_key="a") == runs / "demo-shoes__a" != folder(run_key="b") == runs / "demo-shoes__b"
    # The catalogue flow passes its key on as `run_key`: its default key keeps `runs/<name>/` too.
    catalogue = default.model_copy(update={"run_key": default.catalogue_key})
    assert RunFolder.of(catalogue).root == runs / "demo-shoes"
    assert (
        RunFolder.of(default.model_copy(update={"run_key": "nightly"})).root == runs / "demo-shoes__nightly"
    )
    # A name may hold `--` but never `_`: no key's folder is another name's default folder.
    assert run_dir_of(runs, "a--b") != run_dir_of(runs, "a", "b") == runs / "a__b"
    assert run_dir_of(runs, "a", "x/../y z") == runs / "a__x_.._y_z"  # one folder level, whatever the key


def test_runs_name_stays_with_the_derived_key_that_wrote_it_first(tmp_path):
    """Derived keys (another seed, other images) all default to `runs/<name>/`: a run with seed 1
    replaced the seed-0 run's exports (paid answers), clusters and report there, and the seed-0
    run's artifacts then linked to the seed-1 report."""
    from tasks.run_folder import RunFolder

    runs = tmp_path / "runs"
    seed0 = load_params(DEMO, {"runs_dir": str(runs)})
    seed1 = load_params(DEMO, {"runs_dir": str(runs), "seed": 1})
    assert RunFolder.of(seed0).root == RunFolder.of(seed1).root == runs / "demo-shoes"  # nothing written yet

    first = RunFolder.of(seed0)
    first.claim(seed0.resolved_run_key)
    first.export("main").write_text("answers of seed 0\n")
    assert RunFolder.of(seed0).root == runs / "demo-shoes" and first.taken_by(seed0) is None
    second = RunFolder.of(seed1)
    assert second.root == runs / f"demo-shoes__{seed1.resolved_run_key}"
    assert second.taken_by(seed1) == seed0.resolved_run_key
    second.claim(seed1.resolved_run_key)
    second.export("main").write_text("answers of seed 1\n")
    assert first.export("main").read_text() == "answers of seed 0\n"
    # Each key finds its own folder again; so does a given key that names the other.
    assert RunFolder.of(seed0).root == first.root and RunFolder.of(seed1).root == second.root
    given = seed0.model_copy(update={"run_key": seed1.resolved_run_key})
    assert RunFolder.of(given).root == second.root
    # A given key that `runs/<name>/` holds (the advice after reordered rows names the earlier,
    # derived key) stays there: it began `runs/<name>__<key>/`, a second folder for one paid job.
    named = seed1.model_copy(update={"run_key": seed0.resolved_run_key})
    assert named.run_dir != first.root and RunFolder.of(named).root == first.root
    # A folder written before `run_key.txt` is known by its summary's key.
    legacy = RunFolder(runs / "legacy")
    legacy.create().summary.write_text('{"run_key": "legacy-aaaa-s0"}')
    assert legacy.owner() == "legacy-aaaa-s0"


def test_two_derived_keys_that_find_the_runs_name_free_at_once_take_a_folder_each(tmp_path):
    """Runs of seed 0 and seed 1 started at the same moment both found `runs/<name>/` free and
    both wrote into it: the claim is exclusive, and the key that loses it takes its own folder."""
    from tasks.run_folder import RunFolder

    runs = tmp_path / "runs"
    seed0 = load_params(DEMO, {"runs_dir": str(runs)})
    seed1 = load_params(DEMO, {"runs_dir": str(runs), "seed": 1})
    shared = RunFolder.of(seed1)  # seed 1 finds it free ...
    assert shared.root == runs / "demo-shoes"
    assert RunFolder.take(seed0).root == shared.root  # ... and seed 0 claims it first
    assert not shared.claim(seed1.resolved_run_key)
    assert shared.owner() == seed0.resolved_run_key
    taken = RunFolder.take(seed1)
    assert taken.root == runs / f"demo-shoes__{seed1.resolved_run_key}"
    assert taken.owner() == seed1.resolved_run_key and taken.taken_by(seed1) == seed0.resolved_run_key
    assert RunFolder.take(seed0).root == shared.root and RunFolder.take(seed1).root == taken.root


def _write_yaml(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["dataset"] = str(DEMO.parent / "dataset.tsv")
    data["toloka_dir"] = str(DEMO.parent / "toloka")
    data.update(changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"hits": {"overlap": 0}}, "hits.overlap"),
        ({"hits": {"size": 12}}, "hits.size"),
        ({"hits": {"ovrlap": 3}}, "hits.ovrlap"),
        ({"name": "Bad Name"}, "name"),
        ({"dataset": "/nonexistent.tsv"}, "dataset"),
        ({"toloka": {"environment": "staging"}}, "toloka.environment"),
        ({"toloka": {"url": "127.0.0.1:8765"}}, "toloka.url"),
        ({"budget": {"max_spend": -1}}, "budget.max_spend"),
    ],
)
def test_bad_config_names_the_field(tmp_path, changes, expected):
    with pytest.raises(ConfigError) as error:
        load_params(_write_yaml(tmp_path, **changes))
    assert expected in str(error.value)
    assert "pipeline.yaml" in str(error.value)


def test_a_toloka_url_needs_its_scheme_and_an_empty_one_is_none():
    """The scheme's pattern must not refuse what loaded before: an empty `url` (an emptied form
    field) is toloka-kit's own endpoint for sandbox and production, and the scheme in capitals is
    the same URL to httpx; for `local` an empty one is still the error that says what it needs."""
    from tasks.params import TolokaTarget

    assert TolokaTarget(environment="sandbox", url="").url is None
    assert (
        TolokaTarget(environment="production", url="HTTPS://toloka.example").url == "HTTPS://toloka.example"
    )
    with pytest.raises(ValueError, match="environment 'local' needs `url`"):
        TolokaTarget(environment="local", url="")
    for typed in ("127.0.0.1:8765", "not a url", "ftp://toloka.example", "http:// spaced.example"):
        with pytest.raises(ValueError, match="String should match pattern"):
            TolokaTarget(environment="local", url=typed)


def test_a_field_whose_pattern_refuses_a_value_says_what_it_takes_not_the_regex(tmp_path):
    """`crowdclust run ... --url 127.0.0.1:9101` said `String should match pattern
    '^$|^[hH][tT][tT][pP][sS]?://[^\\s/?#]+\\S*$'`: the missing `http://` left to read out of a regex."""
    config = _write_yaml(tmp_path)
    cases = {
        "toloka.url: must start with http:// or https://": {"toloka": {"url": "127.0.0.1:9101"}},
        "run_key: may hold only letters, digits, '.', '_' and '-' (given 'a b')": {"run_key": "a b"},
        "name: may hold only lowercase letters, digits and '-'": {"name": "Demo Shoes"},
    }
    for expected, overrides in cases.items():
        with pytest.raises(ConfigError) as error:
            load_params(config, overrides)
        assert expected in str(error.value) and "should match" not in str(error.value), str(error.value)


@pytest.mark.parametrize("field", ["hits", "exam", "intruders"])
@pytest.mark.parametrize("reward", [0, 0.001])
def test_a_reward_toloka_would_refuse_is_a_config_error_naming_the_field(tmp_path, field, reward):
    """`exam.reward: 0` was documented as allowed and passed every check: the run created the exam
    project, training, skill and exam pool, then Toloka refused the pool (400 VALIDATION_ERROR); an
    `intruders.reward` below the minimum failed only after the labelling was paid."""
    from emulator.core import MIN_REWARD as TOLOKAS_MINIMUM

    data = yaml.safe_load(DEMO.read_text())
    with pytest.raises(ConfigError) as error:
        load_params(_write_yaml(tmp_path, **{field: {**data[field], "reward": reward}}))
    assert f"{field}.reward: {reward:g} is below ${TOLOKAS_MINIMUM}" in str(error.value)
    accepted = load_params(_write_yaml(tmp_path, **{field: {**data[field], "reward": TOLOKAS_MINIMUM}}))
    assert getattr(accepted, field).reward == TOLOKAS_MINIMUM


def test_a_tab_in_pipeline_yaml_is_one_error_line_naming_line_and_column(tmp_path):
    """A key indented with a tab gave PyYAML's five lines (`in "<unicode string>", line 13, column
    1:` and a caret under the text) after `error:`, and no word on what to do (a tester's editor)."""
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: x\nhits:\n  size: 10\n\toverlap: 7\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == (
        f"{path}, line 4, column 1: not valid YAML: found character '\\t' that cannot start any token; "
        "while scanning for the next token: indent with spaces, not tabs (YAML takes no tab there)"
    )
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"{path}, line 2, column 1: not valid YAML: expected ',' or ']'")


def _non_ascii_config(tmp_path: Path) -> Path:
    """The demo config with a skill named `Démo – Schühe` and a main project whose instruction says
    `Größe` (saved with a byte-order mark, as Windows Notepad saves), all in UTF-8."""
    path = _demo_copy(tmp_path, "")
    folder = _copy_bundle(tmp_path)
    text = path.read_text(encoding="utf-8")
    text = text.replace(f"toloka_dir: {DEMO.parent / 'toloka'}", f"toloka_dir: {folder}")
    text = text.replace("skill_name: Demo shoes clustering", "skill_name: Démo – Schühe")
    path.write_text(text, encoding="utf-8")
    project = folder / "main_project.json"
    data = json.loads(project.read_text(encoding="utf-8"))
    data["public_instructions"] = "Größe: " + data["public_instructions"]
    project.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode())
    return path


def test_configs_are_read_as_utf8_whatever_the_locale(tmp_path):
    """Read in the locale's encoding, `skill_name: Démo` was the skill `DÃ©mo` under a Latin-1 locale,
    and under `LC_ALL=C` without Python's UTF-8 mode (ASCII) every such letter was a traceback."""
    if not (str(ROOT) + str(tmp_path)).isascii():  # Python under an ASCII locale reads .pth files so
        pytest.skip("an ASCII locale cannot start Python from a non-ASCII checkout or open its files")
    path = _non_ascii_config(tmp_path)
    read = (
        "import sys; from tasks.params import load_params; from tasks.toloka_config import load_bundle; "
        "params = load_params(sys.argv[1]); bundle = load_bundle(params.toloka_dir); "
        "print(ascii([params.exam.skill_name, bundle.main_project['public_instructions'][:6]]))"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-c", read, str(path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ascii(["Démo – Schühe", "Größe:"])


def test_a_config_that_is_not_utf8_is_refused_naming_its_line(tmp_path):
    """A Latin-1 `pipeline.yaml` (an old editor's) was a UnicodeDecodeError traceback."""
    path = _non_ascii_config(tmp_path)
    text = path.read_text(encoding="utf-8").replace("Démo – Schühe", "Démo Schühe")
    path.write_bytes(text.encode("latin-1"))
    first = next(letter for letter in text if not letter.isascii())  # the skill's, or a folder's of the path
    line = text[: text.index(first)].count("\n") + 1
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value).startswith(
        f"{path}, line {line}: not UTF-8 text (byte 0x{ord(first):02x} cannot be UTF-8; Latin-1 or "
        "Windows-1252, perhaps): "
        "save it as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 "
    )
    project = tmp_path / "toloka" / "main_project.json"
    project.write_bytes(project.read_bytes()[3:].decode().encode("utf-16"))
    with pytest.raises(TolokaConfigError, match=r"main_project\.json, line 1: not UTF-8 text .*UTF-16"):
        load_bundle(project.parent)


def test_a_tilde_in_a_configs_paths_is_the_home_folder(tmp_path, monkeypatch):
    """`runs_dir: ~/crowd-runs` wrote the run folders into a folder named `~` under the working
    directory, and `dataset: ~/shoes.tsv` was looked for in `<config folder>/~/`."""
    home = tmp_path / "home"
    shutil.copytree(DEMO.parent, home / "shoes")
    monkeypatch.setenv("HOME", str(home))
    path = tmp_path / "config" / "pipeline.yaml"
    path.parent.mkdir()
    path.write_text(
        "name: x\ndataset: ~/shoes/dataset.tsv\ntoloka_dir: ~/shoes/toloka\nruns_dir: ~/crowd-runs\n"
    )
    params = load_params(path)
    assert (params.dataset, params.toloka_dir) == (home / "shoes" / "dataset.tsv", home / "shoes" / "toloka")
    assert params.run_dir == home / "crowd-runs" / "x"
    as_the_form_gives_it = params.model_dump(mode="json") | {"runs_dir": "~/crowd-runs"}
    assert PipelineParams.model_validate(as_the_form_gives_it).runs_dir == home / "crowd-runs"
    as_json = json.dumps(as_the_form_gives_it)  # as a worker's process may get them
    assert PipelineParams.model_validate_json(as_json).runs_dir == home / "crowd-runs"
    assert PipelineParams.model_validate_json(params.model_dump_json()) == params


def test_unreadable_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text", ["", "# the settings come later\n"], ids=["empty", "comments-only"])
def test_a_config_without_settings_is_said_to_hold_none(tmp_path, text):
    """A file saved empty (or only comments) read `name: Field required; dataset: Field required;
    toloka_dir: Field required`, as if three settings had been left out of a config."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == (
        f"{path}: the file holds no settings (it is empty or only comments); a pipeline config names "
        "at least name, dataset, toloka_dir, as configs/demo-shoes/pipeline.yaml does"
    )


def _demo_copy(tmp_path: Path, appended: str) -> Path:
    """The demo config with absolute paths, as its text (comments, order, lines kept) plus `appended`."""
    text = DEMO.read_text()
    text = text.replace("dataset: dataset.tsv", f"dataset: {DEMO.parent / 'dataset.tsv'}")
    text = text.replace("toloka_dir: toloka", f"toloka_dir: {DEMO.parent / 'toloka'}")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text + appended)
    return path


def _line_of(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_a_repeated_top_level_key_is_refused_not_a_reset_of_its_block(tmp_path):
    """`hits:` appended below the `hits:` block would drop its reward and hits_per_item to defaults."""
    path = _demo_copy(tmp_path, "hits:\n  overlap: 3\n")
    first, repeat = _line_of(path, "hits:"), len(path.read_text().splitlines()) - 1
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == (
        f"{path} line {repeat}: key 'hits' repeats line {first}; "
        "a repeated key would replace the first one's values"
    )


def test_a_repeated_nested_key_is_refused_with_its_path(tmp_path):
    path = _demo_copy(tmp_path, "")
    path.write_text(path.read_text().replace("  overlap: 7\n", "  overlap: 7\n  reward: 0.5\n"))
    first, repeat = _line_of(path, "  reward: 0.5"), _line_of(path, "  reward: 0.02")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert f"pipeline.yaml line {repeat}: key 'hits.reward' repeats line {first};" in str(error.value)


def test_a_field_of_the_wrong_type_is_one_line_naming_its_line_and_value(tmp_path):
    """`overlap: five` gave an error of three lines, the file's name then a line per field
    (`hits.overlap: Input should be a valid integer, ...`) without the value or where it is, where
    every other refusal of `crowdclust run` is one `error:` line."""
    path = _demo_copy(tmp_path, "")
    text = path.read_text().replace("  overlap: 7\n", "  overlap: five\n")
    path.write_text(
        text.replace("  max_spend: 50.0", "  max_spend: [50]").replace("  size: 10", "  size: 12")
    )
    with pytest.raises(ConfigError) as error:
        load_params(path)
    overlap, spend, size = (
        _line_of(path, f"  {row}") for row in ("overlap: five", "max_spend: [50]", "size: 12")
    )
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path}: invalid pipeline config: hits.size: 12 images per HIT is more than 10"
    )
    assert f"(line {size}: 12); hits.overlap: Input should be a valid integer" in message
    assert (
        f"(line {overlap}: 'five'); budget.max_spend: Input should be a valid number (line {spend}: [50])"
        in message
    )
    with pytest.raises(ConfigError) as error:  # a value from the command line has no line of the file
        load_params(_demo_copy(tmp_path, ""), {"hits": {"overlap": "six"}})
    assert (
        "hits.overlap: Input should be a valid integer, unable to parse string as an integer (given 'six')"
        in str(error.value)
    )


def test_a_token_put_in_the_config_is_refused_without_printing_it(tmp_path):
    """Naming each bad field's value, the config error printed a token written into the config
    (`toloka: {token: ...}`, an unknown key) in full, into the terminal and the run's log. An unknown
    key's value is never shown, and a secret's key says where the token belongs."""
    path = _demo_copy(tmp_path, "")
    path.write_text(
        path.read_text().replace("toloka:\n", "toloka:\n  token: AQAD-do-not-print\n", 1) + "colour: [red]\n"
    )
    with pytest.raises(ConfigError) as error:
        load_params(path)
    message = str(error.value)
    assert "AQAD-do-not-print" not in message and "red" not in message
    token, colour = _line_of(path, "  token: AQAD-do-not-print"), _line_of(path, "colour: [red]")
    assert (
        f"toloka.token: a secret is never part of the config (it would be in every log and in Prefect's "
        f"run parameters): set TOLOKA_TOKEN, or save it with `crowdclust token save` (line {token})"
    ) in message
    assert f"colour: Extra inputs are not permitted (line {colour})" in message
    with pytest.raises(ConfigError) as error:  # from the command line, neither
        load_params(_demo_copy(tmp_path, ""), {"toloka": {"api_key": "AQAD-do-not-print"}})
    assert "AQAD-do-not-print" not in str(error.value) and "toloka.api_key: a secret is never" in str(
        error.value
    )


def test_a_token_given_as_the_secret_block_name_is_refused_without_printing_it(tmp_path):
    """`token_secret_block: <the token>` (a field whose name reads "token"): with TOLOKA_TOKEN set the
    run went on and stored the token among its Prefect run parameters (the database, the UI); without,
    the error printed it (`create a Prefect Secret block 'AQAD-...'`). No block can be named so."""
    path = _demo_copy(tmp_path, "")
    path.write_text(
        path.read_text().replace("toloka:\n", "toloka:\n  token_secret_block: AQAD-not_this9\n", 1)
    )
    with pytest.raises(ConfigError) as error:
        load_params(path)
    line = _line_of(path, "  token_secret_block: AQAD-not_this9")
    assert str(error.value).endswith(
        "toloka.token_secret_block: not a Prefect block name (lowercase letters, digits and dashes): give "
        "the name of the Secret block that holds the token, never the token itself (that goes in "
        f"TOLOKA_TOKEN, or `crowdclust token save`) (line {line})"
    ), str(error.value)
    with pytest.raises(ConfigError) as error:  # from the command line or a run form, neither
        load_params(_demo_copy(tmp_path, ""), {"toloka": {"token_secret_block": "AQAD-not_this9"}})
    assert "AQAD-not_this9" not in str(error.value)
    schema = PipelineParams.model_json_schema()["$defs"]["TolokaTarget"]["properties"]["token_secret_block"]
    assert schema["pattern"] == "^[a-z0-9-]+$"  # the run form and Prefect's parameter check refuse it too
    target = load_params(
        _demo_copy(tmp_path, ""), {"toloka": {"token_secret_block": "crowdclust-local-token"}}
    )
    assert target.toloka.token_secret_block == "crowdclust-local-token"


def test_a_seed_outside_what_the_generators_take_is_refused_with_its_line(tmp_path):
    """`seed: -1` passed the config check: the run started its Prefect server and flow and stopped
    at the HIT plan on `error: ValueError: expected non-negative integer. Fix the cause and run the
    same command again`, naming neither the file nor the field (and the same command failed again)."""
    for seed in (-1, 2**64):
        path = _demo_copy(tmp_path, "")
        path.write_text(path.read_text().replace("seed: 0\n", f"seed: {seed}\n"))
        with pytest.raises(ConfigError) as error:
            load_params(path)
        message = str(error.value)
        assert message.startswith(f"{path}: invalid pipeline config: seed: Input should be ")
        assert f"(line {_line_of(path, f'seed: {seed}')}: {seed})" in message
    for seed in (0, 2**64 - 1):  # both ends plan the HITs
        params = load_params(DEMO, {"seed": seed})
        images = list(load_dataset(params.dataset)["image"])
        assert len(make_plan(images, params.hits, params.seed).hits) == 82
    import aggregation
    import tasks.params

    assert tasks.params.MAX_SEED == aggregation.MAX_SEED  # what `crowdclust aggregate --seed` takes


def test_the_seed_design_refuses_more_hits_per_image_than_it_can_give(tmp_path):
    """The seed design makes one HIT per image: 8 HITs per image asked with 6-image HITs planned 400
    HITs for 400 images, 6 per image, while the design warning before paying counted 8. Refused with
    the reason; up to `size` (the shipped 10 with 10) the plan gives what was asked."""
    path = _demo_copy(tmp_path, "")
    text = path.read_text().replace("  design: balanced\n", "  design: seed\n")
    path.write_text(
        text.replace("  size: 10\n", "  size: 6\n").replace("  hits_per_item: 10\n", "  hits_per_item: 8\n")
    )
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == (
        f"{path}: invalid pipeline config: hits: hits_per_item 8 is more than size 6: the seed design "
        "makes one HIT per image (its anchor) topped up with others, so each image is in 6 HITs on "
        "average at most; use design balanced for more HITs per image, or hits_per_item 6 or less "
        f"(line {_line_of(path, 'hits:')})"
    )
    items = [f"http://img.example/{i}.png" for i in range(400)]
    for size, asked in ((6, 6), (10, 10), (10, 5)):
        params = load_params(DEMO, {"hits": {"design": "seed", "size": size, "hits_per_item": asked}})
        plan = make_plan(items, params.hits, 0)
        assert len(plan.hits) * size / len(items) == asked == plan.coverage.mean
    # The design warning's advice beyond `size` is the balanced design, not a refused hits_per_item.
    params = load_params(
        DEMO, {"hits": {"design": "seed", "size": 6, "hits_per_item": 6, "expected_styles": 8}}
    )
    warning = design_warning(params, load_bundle(params.toloka_dir), 400)
    assert "this design (hits.size 6, hits.hits_per_item 6) shows each image ~3.7" in warning
    assert "hits.design balanced with hits.hits_per_item 9 would show ~5.5" in warning


def test_an_unknown_key_whose_value_refers_to_itself_is_one_error_line(tmp_path):
    """Finding the lines of the bad fields walked the YAML without the alias guard the repeated-key
    check has: `loop: &x {self: *x}` (legal YAML) ended the run in a RecursionError traceback."""
    path = _demo_copy(tmp_path, "loop: &x\n  self: *x\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    line = _line_of(path, "loop: &x")
    assert (
        str(error.value)
        == f"{path}: invalid pipeline config: loop: Extra inputs are not permitted (line {line})"
    )


def test_merge_keys_may_still_be_overridden(tmp_path):
    """A mapping's own key over one it merged from an anchor is YAML's override, not a repeat."""
    path = _demo_copy(tmp_path, "")
    path.write_text(path.read_text().replace("budget:\n", "budget:\n  <<: {max_spend: 1.0, fee_rate: 0.5}\n"))
    params = load_params(path)
    assert (params.budget.max_spend, params.budget.fee_rate) == (50.0, 0.3)
    assert load_params(_demo_copy(tmp_path, "")) == load_params(DEMO)


def test_cli_run_refuses_a_repeated_key_with_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import crowdclust.runtime
    from crowdclust.cli import app

    monkeypatch.setattr(crowdclust.runtime, "prepare_prefect_env", lambda: None)
    path = _demo_copy(tmp_path, "hits:\n  overlap: 3\n")
    result = CliRunner().invoke(app, ["run", str(path), "--env", "local"])
    assert result.exit_code == 2
    assert f"key 'hits' repeats line {_line_of(path, 'hits:')};" in result.output
    assert "Traceback" not in result.output
    nested = _demo_copy(tmp_path, "")
    nested.write_text(nested.read_text().replace("  n_exams: 3\n", "  n_exams: 3\n  n_exams: 1\n"))
    result = CliRunner().invoke(app, ["run", str(nested), "--env", "local"])
    assert result.exit_code == 2 and "key 'exam.n_exams' repeats line" in result.output


def _copy_bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "toloka"
    shutil.copytree(DEMO.parent / "toloka", folder)
    return folder


def test_bundle_errors_name_the_file(tmp_path):
    folder = _copy_bundle(tmp_path)
    (folder / "main_pool.json").write_text("{not json")
    with pytest.raises(TolokaConfigError, match=r"main_pool\.json: not valid JSON"):
        load_bundle(folder)
    (folder / "main_pool.json").unlink()
    with pytest.raises(TolokaConfigError, match=r"main_pool\.json: missing"):
        load_bundle(folder)


def test_a_trailing_comma_in_a_toloka_config_is_named_at_its_line(tmp_path):
    """A comma after a pool's last field read "not valid JSON: Expecting property name enclosed in
    double quotes: line 173 column 1 (char 4208)": the line of the `}` after it, and no cause."""
    folder = _copy_bundle(tmp_path)
    pool = folder / "main_pool.json"
    original = pool.read_text()
    lines = original.rstrip().splitlines()
    assert lines[-1] == "}"
    lines[-2] += ","
    pool.write_text("\n".join(lines) + "\n")
    with pytest.raises(TolokaConfigError) as error:
        load_bundle(folder)
    assert str(error.value) == (
        f"{pool}: not valid JSON: line {len(lines) - 1}, column {len(lines[-2])}: a trailing comma "
        "before } (JSON allows none after the last member of an object): remove it"
    )
    pool.write_text(original)
    suites = folder / "exam_suites.json"
    text = suites.read_text().rstrip()
    suites.write_text(text[:-1].rstrip() + ",\n]\n")
    with pytest.raises(TolokaConfigError, match=r"before \] \(JSON allows none after the last element"):
        load_bundle(folder)
    suites.write_text("// the exams\n" + text)
    with pytest.raises(TolokaConfigError, match=r"suites\.json: not valid JSON: line 1, column 1: a comment"):
        load_bundle(folder)


def test_exam_suite_without_matching_golden_is_rejected(tmp_path):
    folder = _copy_bundle(tmp_path)
    suites = json.loads((folder / "exam_suites.json").read_text())
    suites[1]["tasks"][0]["known_solutions"][0]["output_values"]["result"].pop()
    (folder / "exam_suites.json").write_text(json.dumps(suites))
    with pytest.raises(TolokaConfigError, match=r"exam_suites.json\[1\]"):
        load_bundle(folder)


def test_placeholders_are_filled_with_typed_values():
    params = load_params(DEMO)
    bundle = load_bundle(params.toloka_dir)
    filled = bundle.filled(Placeholders.of(params).with_skill("42"))
    text = json.dumps(dataclasses.asdict(filled))
    assert "${" not in text
    skill_filter = filled.main_pool["filter"]["and"][0]["or"][0]
    assert skill_filter == {"category": "skill", "key": "42", "operator": "GTE", "value": 75.0}
    actions = [r["action"] for c in filled.main_pool["quality_control"]["configs"] for r in c["rules"]]
    assert {"skill_id": "42", "skill_value": 0} in [
        a["parameters"] for a in actions if a["type"] == "SET_SKILL"
    ]
    assert "42" in json.dumps(filled.intruders_pool["filter"])
    assert filled.main_pool["defaults"]["default_overlap_for_new_task_suites"] == 7
    assert filled.main_pool["reward_per_assignment"] == 0.02
    assert filled.exam_pool["defaults"]["default_overlap_for_new_tasks"] == 100
    with pytest.raises(TolokaConfigError, match="unknown placeholder"):
        fill({"x": "a ${nope} b"}, {})


@pytest.mark.parametrize(
    ("file", "path", "literal", "placeholder"),
    [
        ("main_pool.json", ("reward_per_assignment",), 0.05, "reward"),
        ("main_pool.json", ("defaults", "default_overlap_for_new_task_suites"), 3, "overlap"),
        ("exam_pool.json", ("defaults", "default_overlap_for_new_tasks"), 50, "exam_overlap"),
        ("intruders_pool.json", ("reward_per_assignment",), 0.01, "intruder_reward"),
    ],
)
def test_a_literal_cost_in_a_pool_config_is_a_load_time_error(tmp_path, file, path, literal, placeholder):
    folder = _copy_bundle(tmp_path)
    data = json.loads((folder / file).read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = literal
    (folder / file).write_text(json.dumps(data))
    field = re.escape(".".join(path))
    expected = rf"{file}: {field} must be the placeholder \"\$\{{{placeholder}\}}\", found {literal}"
    with pytest.raises(TolokaConfigError, match=expected):
        load_bundle(folder)


def test_an_exam_suite_may_not_set_its_own_overlap(tmp_path):
    folder = _copy_bundle(tmp_path)
    suites = json.loads((folder / "exam_suites.json").read_text())
    suites[2]["overlap"] = 500
    (folder / "exam_suites.json").write_text(json.dumps(suites))
    with pytest.raises(TolokaConfigError, match=r"exam_suites.json\[2\]: overlap is set on the suite"):
        load_bundle(folder)


def test_the_old_method_name_is_read_as_gomes():
    assert AggregationParams.model_validate({"method": "crowd"}).method == "gomes"
    assert load_params(DEMO, {"aggregation": {"method": "crowd"}}).aggregation.method == "gomes"
    with pytest.raises(ConfigError, match=r"aggregation\.method"):
        load_params(DEMO, {"aggregation": {"method": "kmeans"}})


def test_configs_hold_no_hard_coded_skill_ids():
    for folder in (ROOT / "configs" / "shoes" / "toloka", ROOT / "configs" / "demo-shoes" / "toloka"):
        for path in folder.glob("*pool.json"):
            data = json.loads(path.read_text())
            for leaf in _skill_leaves(data.get("filter", {})):
                assert leaf["key"] == "${skill_id}", path


def _skill_leaves(node):
    if isinstance(node, dict):
        if node.get("category") == "skill":
            yield node
        for value in node.values():
            yield from _skill_leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _skill_leaves(value)


def test_demo_exam_gold_matches_catalogue_truth():
    params = load_params(DEMO)
    truth = truth_of(load_dataset(params.dataset))
    for suite in load_bundle(params.toloka_dir).exam_suites:
        task = suite["tasks"][0]
        images = task["input_values"]["images"]
        gold = [r["group"] for r in task["known_solutions"][0]["output_values"]["result"]]
        for i, a in enumerate(images):
            for j, b in enumerate(images):
                assert (gold[i] == gold[j]) == (truth[a] == truth[b])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("url\nhttp://x/a.png\n", "needs an `image` column"),
        (
            "image,class\nhttp://x/a.png,boot\n",
            "line 1 has no tab: the dataset must be tab-separated (TSV), and this header reads as "
            "comma-separated: image,class",
        ),
        # A European spreadsheet's CSV: it was `needs an `image` column (found: image;class)`
        (
            "image;class\nhttp://x/a.png;boot\n",
            "line 1 has no tab: the dataset must be tab-separated (TSV), and this header reads as "
            "semicolon-separated: image;class",
        ),
        ("image\nhttp://x/a.png\nftp://x/b.png\n", "line 3: image 'ftp://x/b.png' is not an http"),
        ("image\nhttp://x/a.png\nhttp://x/a.png\n", "line 3: image http://x/a.png repeats line 2"),
        (
            "image\tclass\nhttp://x/a.png\tboot\nhttp://x/b.png\n",
            "line 3: 1 field where the header (line 1) has 2 (image, class): a tab missing",
        ),
        (
            "image\tclass\nhttp://x/a.png\tboot\tred\n",
            "line 2: 3 fields where the header (line 1) has 2 (image, class): a tab too many",
        ),
        ("image\tClass\tCLASS\nhttp://x/a.png\tboot\tred\n", "line 1: columns `Class`, `CLASS` could each"),
        ("Image\tIMAGE\nhttp://x/a.png\thttp://x/b.png\n", "line 1: columns `Image`, `IMAGE` could each"),
        ("image\n", "no rows"),
        (
            "image\nhttp://x/a.png\nhttp://[cdn.example.com/img 11.png\n",
            "line 3: image 'http://[cdn.example.com/img 11.png' is not a valid URL (Invalid IPv6 URL)",
        ),
        ("image\nhttp://x:99999/a.png\n", "line 2: image 'http://x:99999/a.png' is not a valid URL (Port"),
        ("image\nhttp:///a.png\n", "line 2: image 'http:///a.png' has no host"),
        ("image\nhttp://x/\x01a.png\n", "is not a valid URL (Invalid non-printable ASCII"),
        # Refused (the emulator's crowd and the checks read `http://` as written), but not as "not an
        # http(s) URL": a 5,000-row file with one `HTTP://` row said so of a plain http image.
        (
            "image\nHTTP://x/a.png\n",
            "line 2: image 'HTTP://x/a.png' has its scheme in capitals: write it http://",
        ),
        (
            "image\nHttps://x/a.png\n",
            "line 2: image 'Https://x/a.png' has its scheme in capitals: write it https://",
        ),
        ("image\nhttp:x/a.png\n", "line 2: image 'http:x/a.png' is not an http(s) URL"),
    ],
)
def test_bad_dataset_rows_are_named(tmp_path, content, expected):
    path = tmp_path / "data.tsv"
    path.write_text(content)
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert expected in str(error.value)


def test_every_row_with_an_unusable_image_is_counted_in_the_one_error(tmp_path):
    """A 3,000-image catalogue with its first 50 rows pasted again at the end and a broken URL on
    line 2,000 was refused one row at a time: 51 runs to learn what was wrong, each after reading the
    whole file. The error names the first row in full and counts and locates the rest, on one line."""
    rows = [f"http://x/{n}.png\tboot" for n in range(3000)]
    rows[1998] = "ftp://x/y.png\tboot"  # line 2000
    path = tmp_path / "data.tsv"
    path.write_text("image\tclass\n" + "\n".join(rows + rows[:50]) + "\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(error.value) == (
        f"{path}, line 2000: image 'ftp://x/y.png' is not an http(s) URL; and 50 more (50 repeated "
        "images): line 3002, 3003, 3004, 3005, 3006 and 45 more"
    )
    path.write_text("image\nhttp://x/a.png\noops\nhttp://x/a.png\nhttp:///b.png\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(error.value) == (
        f"{path}, line 3: image 'oops' is not an http(s) URL; and 2 more (1 bad URL and 1 repeated "
        "image): line 4, 5"
    )
    # A stray tab stopped the run alone; its bad URLs came out on the next run (a tester's 5,000 rows)
    path.write_text(
        "image\tclass\nhttp://x/a.png\tboot\nhttp://x/b.png\tboot\tx\noops\tboot\nhttp://x/c.png\n"
    )
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(error.value) == (
        f"{path}, line 3: 3 fields where the header (line 1) has 2 (image, class): a tab too many, or a "
        "tab inside a cell?; and 2 more (1 bad URL and 1 misshapen row): line 4, 5"
    )


def test_an_empty_last_cell_beyond_the_header_is_read_as_nothing(tmp_path):
    """A spreadsheet saved as text ends every row in a tab (an empty column of its used range): the
    run refused the file, every row of it ("3 fields where the header (line 1) has 2 ...; and 81
    more"), for a cell that holds nothing. It is read as the row without it; a cell there that holds
    something is still refused, and so is a row short of a named column."""
    path = tmp_path / "data.tsv"
    path.write_text("image\tclass\nhttp://x/a.png\tboot\t\nhttp://x/b.png\t\t \nhttp://x/c.png\tflat\n")
    frame = load_dataset(path)
    assert frame["image"].tolist() == ["http://x/a.png", "http://x/b.png", "http://x/c.png"]
    assert frame["class"].tolist() == ["boot", "", "flat"]
    # A header that ends in a tab too, and a row that does not.
    path.write_text("image\tclass\t\nhttp://x/a.png\tboot\t\nhttp://x/b.png\tflat\n")
    assert load_dataset(path)["class"].tolist() == ["boot", "flat"]
    path.write_text("image\tclass\nhttp://x/a.png\tboot\t\nhttp://x/b.png\tboot\tred\n")
    with pytest.raises(DatasetError, match=r"line 3: 3 fields where the header \(line 1\) has 2"):
        load_dataset(path)
    path.write_text("image\tclass\t\nhttp://x/a.png\n")
    with pytest.raises(DatasetError, match=r"line 2: 1 field where the header \(line 1\) has 3"):
        load_dataset(path)


def test_a_stray_quote_that_joins_rows_is_refused_naming_its_lines(tmp_path):
    """A class typed `"boots` and a later `x"` made rows 2-5 one record of the header's two fields:
    the run went on with 3 images fewer and said nothing (a tester's spreadsheet). A quote that is
    never closed ran on to the end of the file, and was named as a missing tab."""
    rows = [f"http://x/{n}.png\tboot" for n in range(6)]
    rows[0], rows[3] = 'http://x/0.png\t"boots', 'http://x/3.png\tx"'
    path = tmp_path / "data.tsv"
    path.write_text("image\tclass\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(error.value) == (
        f'{path}, line 2: a cell starts with a quote (") that nothing closes on its line, so lines 2-5 '
        "read as one row (the cell runs on to the next quote or the end of the file): remove the stray "
        'quote, or write each " inside a quoted cell twice ("")'
    )
    path.write_text("image\tclass\n" + "\n".join([rows[0], *rows[4:]]) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: a cell starts with a quote .* lines 2-4 read as one"):
        load_dataset(path)
    # Quotes that close on their line, an inch mark and a quoted note over two lines still read.
    path.write_text('image\tclass\tnote\n"http://x/a.png"\t"boot"\t"a\nb"\nhttp://x/b.png\t5" heel\tc\n')
    frame = load_dataset(path)
    assert frame["image"].tolist() == ["http://x/a.png", "http://x/b.png"]
    assert frame["class"].tolist() == ["boot", '5" heel']


def test_a_carriage_return_alone_is_refused_saying_so(tmp_path):
    """A file saved with classic Mac line ends (CR alone) was refused as `line 1: cannot read as TSV:
    new-line character seen in unquoted field - do you need to open the file in universal-newline
    mode?`, which names neither the cause nor a fix (a tester's Excel for Mac export)."""
    path = tmp_path / "data.tsv"
    path.write_bytes(b"image\tclass\rhttp://x/a.png\tboot\rhttp://x/b.png\tboot\r")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(error.value).startswith(
        f"{path}: its lines end in a carriage return alone (CR, as old Mac spreadsheets save text), "
        "not a line feed (LF or CRLF): save it with Windows or Unix line ends, e.g. `tr '\\r' '\\n' <"
    )
    path.write_bytes(b"image\tclass\nhttp://x/a.png\tboot\nhttp://x/b.png\tbo\rot\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(error.value).startswith(
        f"{path}, line 3: a carriage return (CR) inside the line, where only a line end (LF or CRLF) "
        "may have one: remove it, e.g. `tr -d '\\r' <"
    )


def _grep_n(data: bytes, needle: bytes) -> list[int]:
    """The line numbers `grep -n` prints for `needle` (1-based, lines end at `\\n`)."""
    return [n for n, line in enumerate(data.split(b"\n"), start=1) if needle in line]


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda t: t, id="plain"),
        pytest.param(lambda t: t.replace("a.png\tboot\n", "a.png\tboot\n\n"), id="a blank line"),
        pytest.param(lambda t: "\n" + t.replace("\n", "\n\n\n"), id="blank lines everywhere"),
        pytest.param(lambda t: t.replace("\n", " \t \n\n"), id="whitespace-only lines"),
        pytest.param(lambda t: "\ufeff" + t.replace("\n", "\r\n\r\n"), id="BOM, CRLF, blank lines"),
    ],
)
def test_messages_name_the_line_grep_n_finds(tmp_path, spell):
    """After a blank line the messages said `line 60` for a row on line 61."""
    rows = "".join(f"http://x/{n}.png\tboot\n" for n in range(5))
    base = f"image\tclass\nhttp://x/a.png\tboot\n{rows}"
    path = tmp_path / "data.tsv"
    for tail, needle, message in [
        ("oops\tboot\n", b"oops", "image 'oops' is not an http(s) URL"),
        ("http://x/a.png\tboot\n", b"a.png", "image http://x/a.png repeats line {first}"),
    ]:
        data = spell(base + tail).encode("utf-8")
        path.write_bytes(data)
        where = _grep_n(data, needle)
        with pytest.raises(DatasetError) as error:
            load_dataset(path)
        assert str(error.value) == f"{path}, line {where[-1]}: " + message.format(first=where[0])


def test_a_capitalised_class_header_is_the_truth(tmp_path):
    """`Class` from a spreadsheet was read as "no truth": no ARI, and no word of why."""
    path = tmp_path / "data.tsv"
    path.write_text("Image \tClass\nhttp://x/a.png\tboot\nhttp://x/b.png\tshoe\n")
    data = read_dataset(path)
    assert truth_of(data.frame).to_dict() == {"http://x/a.png": "boot", "http://x/b.png": "shoe"}
    assert data.warnings == ()


def test_columns_but_none_read_as_the_truth_are_warned_of(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("image\tlabel\nhttp://x/a.png\tboot\n")
    data = read_dataset(path)
    assert truth_of(data.frame) is None
    (warning,) = data.warnings
    assert warning.startswith(f"{path}, line 1: no `class` column, so no truth") and "label" in warning
    path.write_text("image\nhttp://x/a.png\n")
    assert read_dataset(path).warnings == ()  # only images: nothing was meant as the truth


def test_blank_truth_cells_are_unknown_classes_and_named(tmp_path):
    """A few blank cells stopped the whole run, with dropping the column as the only way on."""
    path = tmp_path / "data.tsv"
    path.write_text(
        "image\tclass\nhttp://x/a.png\tboot\nhttp://x/b.png\t\nhttp://x/c.png\tshoe\nhttp://x/d.png\t \n"
    )
    data = read_dataset(path)
    assert data.frame["image"].tolist() == [f"http://x/{n}.png" for n in "abcd"]
    assert truth_of(data.frame).to_dict() == {"http://x/a.png": "boot", "http://x/c.png": "shoe"}
    (warning,) = data.warnings
    assert "2 image(s) with a blank `class` (line 3, 5)" in warning and "cover the 2 images" in warning
    path.write_text("image\tclass\nhttp://x/a.png\t\n")
    assert truth_of(load_dataset(path)) is None
    assert "every `class` cell is blank" in read_dataset(path).warnings[0]


def test_scores_over_part_of_the_images_say_so():
    from tasks.stages import truth_share

    assert truth_share({"ari": 1.0, "n_items": 80}, 82) == " (over the 80 of 82 images with a class)"
    assert truth_share({"ari": 1.0, "n_items": 82}, 82) == ""
    assert truth_share(None, 82) == ""


def test_the_same_image_under_two_spellings_of_its_url_is_warned_of_naming_both_lines(tmp_path):
    """A server sees one picture behind each pair; the crowd would be paid to group it as two."""
    path = tmp_path / "data.tsv"
    rows = [
        "https://x/a.png",
        "http://x/b.png",
        "",
        "http://x/a.png",  # the scheme
        "https://CDN.example.com:443/c%20d.png",
        "https://cdn.example.com/c d.png#zoom",  # host case, default port, %-encoding, fragment
        "https://cdn.example.com:8443/c d.png",  # another port: another server
        "https://cdn.example.com/c d.png?v=2",  # a query the server may answer differently
    ]
    path.write_text("image\n" + "\n".join(rows) + "\n")
    (warning,) = read_dataset(path).warnings
    assert "the same image under two spellings of its URL" in warning
    assert "line 5 repeats line 2 (http://x/a.png)" in warning
    assert "line 7 repeats line 6 (https://cdn.example.com/c d.png#zoom)" in warning
    assert "line 8" not in warning and "line 9" not in warning


def test_seed_dataset_header_is_accepted(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("INPUT:image\nhttps://x/a.jpg\nhttps://x/b.jpg\n")
    frame = load_dataset(path)
    assert frame["image"].tolist() == ["https://x/a.jpg", "https://x/b.jpg"]
    assert truth_of(frame) is None


def test_a_hit_size_above_the_colours_says_why(tmp_path, monkeypatch):
    """`hits.size: 20` said only "Input should be less than or equal to 10"."""
    from typer.testing import CliRunner

    import crowdclust.runtime
    from crowdclust.cli import app

    with pytest.raises(ConfigError) as error:
        load_params(DEMO, {"hits": {"size": 20}})
    assert "hits.size: 20 images per HIT is more than 10: the task interface offers 10 colours" in str(
        error.value
    )
    assert load_params(DEMO, {"hits": {"size": 10}}).hits.size == 10
    assert PipelineParams.model_json_schema()["$defs"]["HitParams"]["properties"]["size"]["maximum"] == 10
    monkeypatch.setattr(crowdclust.runtime, "prepare_prefect_env", lambda: None)
    result = CliRunner().invoke(app, ["run", str(_write_yaml(tmp_path, hits={"size": 20})), "--env", "local"])
    assert result.exit_code == 2 and "offers 10 colours, one per group" in result.output


def test_cli_run_reports_a_bad_config_without_starting_prefect(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import crowdclust.runtime
    from crowdclust.cli import app

    monkeypatch.setattr(crowdclust.runtime, "prepare_prefect_env", lambda: None)
    result = CliRunner().invoke(
        app, ["run", str(_write_yaml(tmp_path, hits={"overlap": -2})), "--env", "local"]
    )
    assert result.exit_code == 2
    assert "hits.overlap" in result.output
    bad_env = CliRunner().invoke(app, ["run", str(DEMO), "--env", "staging"])
    assert bad_env.exit_code != 0


def test_flow_parameters_render_a_documented_form():
    from flows.pipeline import crowdclust_pipeline

    schema = crowdclust_pipeline.parameters.model_dump()
    assert list(schema["properties"]) == ["params"]
    overlap = schema["definitions"]["HitParams"]["properties"]["overlap"]
    assert overlap["default"] == 7 and overlap["minimum"] == 1 and overlap["description"]


def test_run_settings_default_to_the_project_folder_and_yield_to_exported_ones(tmp_path, monkeypatch):
    from crowdclust.runtime import STORAGE_SETTINGS, prepare_prefect_env
    from tasks.settings import Settings

    for name in (
        *STORAGE_SETTINGS,
        "PREFECT_HOME",
        "CROWDCLUST_PROJECT_DIR",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().configs_dir == tmp_path / "configs"
    prepare_prefect_env()
    assert os.environ["PREFECT_HOME"] == str(tmp_path / ".prefect")
    assert os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(tmp_path / ".prefect_results")
    # a `crowdclust run` against the service's server beats as often as the service's crash detection expects
    # (Prefect's default, 180 s, would have a healthy run marked Crashed after 90 s of silence)
    from crowdclust.runtime import HEARTBEAT_SECONDS

    assert os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)
    monkeypatch.delenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH")
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", "/shared/results")  # Prefect's older name wins too
    monkeypatch.setenv("CROWDCLUST_PROJECT_DIR", str(tmp_path / "elsewhere"))
    prepare_prefect_env()
    assert "PREFECT_RESULTS_LOCAL_STORAGE_PATH" not in os.environ
    assert Settings().results_dir == tmp_path / "elsewhere" / ".prefect_results"


def test_the_demo_prefetches_modules_that_exist():
    """A misspelt name would only fail in the demo's background thread, where nobody sees it."""
    import importlib.util

    from crowdclust.demo import PREFETCH

    assert [name for name in PREFETCH if importlib.util.find_spec(name) is None] == []
