"""The schema holds every default; bad configs fail naming the key and the value."""

from pathlib import Path

import pytest
import yaml

from mammoclip.config import ConfigError, fill_defaults, load_config, load_schema, read_yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def test_empty_config_gets_every_default(schema):
    config = load_config({}, schema)
    assert config["seed"] == 42
    assert config["legacy"] is False
    assert config["preprocess"] == {"width": 912, "height": 1520, "shards": 8, "max_failed_fraction": 0.01}
    assert config["datasets"]["vindr"]["dicom_template"] == "images/{study_id}/{image_id}.dicom"
    assert config["datasets"]["rsna"]["metadata_csv"] == "train.csv"
    assert config["datasets"]["inhouse"]["root"] is None
    assert config["phantoms"]["transfer_syntaxes"] == ["uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"]


def test_demo_config_overrides_only_what_it_names(schema):
    config = load_config(read_yaml(ROOT / "config" / "config.yaml"), schema)
    assert (config["preprocess"]["width"], config["preprocess"]["height"]) == (160, 256)
    assert config["preprocess"]["max_failed_fraction"] == 0.01  # from the schema
    assert all(config["datasets"][d]["source"] == "phantom" for d in ("vindr", "rsna", "inhouse"))


def test_fill_defaults_does_not_touch_its_input(schema):
    original = {"preprocess": {"width": 10}}
    fill_defaults(original, schema)
    assert original == {"preprocess": {"width": 10}}


def test_every_default_lives_only_in_the_schema():
    """config.yaml must not repeat a schema default (one home per default)."""
    schema = load_schema()
    demo = read_yaml(ROOT / "config" / "config.yaml")
    filled_empty = fill_defaults({}, schema)

    def walk(node, defaults, path):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, defaults.get(key, {}), (*path, key))
            elif key in defaults and defaults[key] == value:
                yield ".".join((*path, key))

    assert list(walk(demo, filled_empty, ())) == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"preprocess": {"shrads": 3}},
            "config key 'preprocess.shrads' is not a known setting; did you mean 'shards'?",
        ),
        ({"sed": 1}, "config key 'sed' is not a known setting; did you mean 'seed'?"),
        ({"preprocess": {"width": "big"}}, "config key 'preprocess.width': value 'big' is invalid"),
        ({"preprocess": {"max_failed_fraction": 2}}, "config key 'preprocess.max_failed_fraction': value 2"),
        (
            {"phantoms": {"transfer_syntaxes": ["jpeg"]}},
            "config key 'phantoms.transfer_syntaxes[0]': value 'jpeg'",
        ),
        ({"datasets": {"rsna": {"source": "dicom"}}}, "config key 'datasets.rsna.root' must be set"),
        ({"datasets": {"vindr": {"source": "tiff"}}}, "config key 'datasets.vindr.source': value 'tiff'"),
        ({"legacy": "maybe"}, "config key 'legacy': value 'maybe' is invalid"),
    ],
)
def test_bad_values_name_key_and_value(schema, config, expected):
    with pytest.raises(ConfigError) as err:
        load_config(config, schema)
    assert expected in str(err.value)


def test_missing_path_names_key_and_path(schema, tmp_path):
    config = {"datasets": {"vindr": {"source": "dicom", "root": "no/such/folder"}}}
    with pytest.raises(
        ConfigError, match=r"config key 'datasets.vindr.root': path 'no/such/folder' does not exist"
    ):
        load_config(config, schema, base_dir=tmp_path)
    (tmp_path / "no/such/folder").mkdir(parents=True)
    assert load_config(config, schema, base_dir=tmp_path)["datasets"]["vindr"]["root"] == "no/such/folder"


def test_all_errors_reported_at_once(schema):
    with pytest.raises(ConfigError) as err:
        load_config({"seed": -1, "preprocess": {"shards": 0}}, schema)
    assert "'seed'" in str(err.value) and "'preprocess.shards'" in str(err.value)


def test_paper_config_is_valid_once_paths_exist(schema, tmp_path):
    paper = read_yaml(ROOT / "config" / "paper.yaml")
    with pytest.raises(ConfigError, match="datasets.vindr.root"):
        load_config(paper, schema)
    for name in ("vindr", "rsna", "inhouse"):
        folder = tmp_path / name
        folder.mkdir()
        paper["datasets"][name]["root"] = str(folder)
    config = load_config(paper, schema)
    assert (config["preprocess"]["width"], config["preprocess"]["height"]) == (912, 1520)


def test_read_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match=str(bad)):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_yaml(listing)


def test_strings_from_snakemake_command_line_are_coerced(schema):
    # `snakemake --config preprocess='{shards: 4}'` delivers nested scalars as strings
    config = load_config(
        {"preprocess": {"shards": "4", "max_failed_fraction": "0.5"}, "legacy": "true"}, schema
    )
    assert config["preprocess"]["shards"] == 4
    assert config["preprocess"]["max_failed_fraction"] == 0.5
    assert config["legacy"] is True
    with pytest.raises(ConfigError, match="config key 'preprocess.shards': value 'four'"):
        load_config({"preprocess": {"shards": "four"}}, schema)
    with pytest.raises(ConfigError, match="config key 'preprocess.shards': value '2.5'"):
        load_config({"preprocess": {"shards": "2.5"}}, schema)
