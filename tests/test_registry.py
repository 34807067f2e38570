"""mammoclip.registry: one complete entry per dataset and label, consistent with the config and the code
it names, importable without heavy dependencies."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from mammoclip import registry
from mammoclip.config import load_config
from mammoclip.registry import DatasetEntry, LabelEntry


@pytest.fixture(scope="module")
def config():
    return load_config({})


def _config_value(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def test_importing_the_registry_imports_no_heavy_package():
    code = "import sys, mammoclip.registry, mammoclip.runs; print(sorted(m for m in ('torch', 'pandas', "
    code += "'numpy', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_three_datasets_and_four_labels():
    assert registry.list_datasets() == ["vindr", "rsna", "inhouse"]
    assert registry.list_labels() == ["Mass", "Suspicious_Calcification", "density", "cancer"]
    assert {n: registry.get_label(n).n_classes for n in registry.list_labels()} == {
        "Mass": 1,
        "Suspicious_Calcification": 1,
        "density": 4,
        "cancer": 1,
    }
    assert [label.name for label in registry.labels_of("rsna")] == ["cancer"]
    assert registry.zero_shot_tasks("vindr") == {
        "mass": "Mass",
        "suspicious_calcification": "Suspicious_Calcification",
        "density": "density",
    }
    assert registry.zero_shot_tasks("rsna") == {"malignancy": "cancer"}
    assert registry.zero_shot_tasks("inhouse") == {}


def test_every_config_dataset_is_registered(config):
    assert sorted(config["datasets"]) == sorted(registry.list_datasets())
    assert sorted(config["classify"]["labels"]) == sorted(registry.list_labels())


@pytest.mark.parametrize("name", registry.list_datasets())
def test_dataset_entries_are_complete_and_name_real_code(name, config):
    entry = registry.get_dataset(name)
    assert entry.name == name and entry.description
    assert set(entry.id_columns) == {"patient_id", "image_id", "laterality", "view"}
    assert entry.metadata_files and entry.images_per_size_unit == 4
    # the configured metadata CSV is one of the dataset's files
    assert config["datasets"][name]["metadata_csv"] in entry.metadata_files
    # phantom: the generator exists and takes the size and option keys the config holds
    generate = registry.resolve(entry.phantom_generator)
    parameters = inspect.signature(generate).parameters
    for key in (entry.phantom_size_key, *entry.phantom_options):
        assert key in parameters and key in config["phantoms"][name], key
    # annotations -> classifiers and zero-shot
    assert set(entry.protocols) <= {"paper", "clean"}
    assert set(entry.classifier_tables.values()) <= set(entry.annotation_tables)
    for path in entry.annotation_outputs().values():
        assert path.startswith(f"results/annotations/{name}/") and path.endswith(".csv")
    if entry.protocols:
        assert set(inspect.signature(registry.resolve(entry.classifier_split)).parameters) >= {
            "protocol",
            "fold",
        }
        assert registry.labels_of(name)
        assert _config_value(config, entry.clean_folds_key) is None or isinstance(
            _config_value(config, entry.clean_folds_key), list
        )
    else:
        assert entry.classifier_split is None and not registry.labels_of(name)
    if entry.zero_shot_evaluator:
        evaluate = inspect.signature(registry.resolve(entry.zero_shot_evaluator)).parameters
        assert set(entry.zero_shot_tables) <= set(evaluate) and "seed" in evaluate
        assert set(registry.zero_shot_tasks(name)) <= set(config["inference"]["prompts"])
        # the ROC curves' sets read the evaluator's tables
        sets = inspect.signature(registry.resolve(entry.zero_shot_sets)).parameters
        assert set(sets) == {"scores", *entry.zero_shot_tables}
    else:
        assert not entry.zero_shot_tables and entry.zero_shot_sets is None


def test_paths_of_the_annotation_tables():
    vindr, rsna = registry.get_dataset("vindr"), registry.get_dataset("rsna")
    assert vindr.classifier_inputs("paper") == {
        "rows": "results/annotations/vindr/vindr_detection_v1_folds.csv"
    }
    assert vindr.classifier_inputs("clean") == {"images": "results/annotations/vindr/vindr_images.csv"}
    assert rsna.classifier_inputs("clean") == {"folds": "results/annotations/rsna/train_folds.csv"}
    assert list(vindr.zero_shot_inputs()) == ["rows", "images"]
    assert vindr.annotation_provenance == "results/annotations/vindr/provenance.json"
    assert registry.get_dataset("inhouse").annotation_outputs() == {}


def test_fold_policy(config):
    assert registry.classifier_folds("vindr", "paper", config) == [0]
    assert registry.classifier_folds("rsna", "paper", config) == [0]
    assert registry.classifier_folds("vindr", "clean", config) == config["classify"]["vindr_clean_folds"]
    # RSNA: all folds unless some are configured
    assert registry.classifier_folds("rsna", "clean", config) == list(
        range(config["annotations"]["rsna_folds"])
    )
    configured = {**config, "classify": {**config["classify"], "rsna_clean_folds": [2]}}
    assert registry.classifier_folds("rsna", "clean", configured) == [2]


def test_detection_labels_tables_and_folds(config):
    assert [(label.name, label.detection_category) for label in registry.detection_labels()] == [
        ("Mass", "Mass"),
        ("Suspicious_Calcification", "Suspicious Calcification"),
    ]
    assert registry.detection_labels("rsna") == []
    # every label with a detector has its settings in the detect section, and no other label
    assert sorted(config["detect"]["labels"]) == sorted(label.name for label in registry.detection_labels())
    assert registry.get_dataset("vindr").detection_inputs() == {
        "images": "results/annotations/vindr/vindr_images.csv",
        "boxes": "results/annotations/vindr/vindr_boxes.csv",
    }
    assert registry.get_dataset("rsna").detection_inputs() == {}
    assert registry.detection_folds("vindr", "paper", config) == [0]
    configured = {**config, "detect": {**config["detect"], "folds": [1, 3]}}
    assert registry.detection_folds("vindr", "clean", configured) == [1, 3]
    with pytest.raises(ValueError, match="detection_tables needs"):
        DatasetEntry(
            name="x",
            description="x",
            id_columns={},
            metadata_files=("a.csv",),
            phantom_generator="m.f",
            phantom_size_key="n",
            annotation_tables={"images": "i.csv"},
            detection_tables={"images": "images"},
        )


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'ddsm'; known: vindr, rsna, inhouse"):
        registry.get_dataset("ddsm")
    with pytest.raises(ValueError, match="unknown label 'Calc'"):
        registry.get_label("Calc")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_dataset(registry.get_dataset("vindr"))
    with pytest.raises(ValueError, match="unknown dataset"):
        registry.register_label(LabelEntry("x", "ddsm", 1))
    with pytest.raises(ValueError, match="not annotation tables"):
        DatasetEntry(
            name="x",
            description="x",
            id_columns={},
            metadata_files=("a.csv",),
            phantom_generator="m.f",
            phantom_size_key="n",
            classifier_tables={"paper": "rows"},
        )


def test_a_fourth_dataset_is_one_registration(monkeypatch):
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    monkeypatch.setattr(registry, "_LABELS", dict(registry._LABELS))

    @registry.register_dataset
    def ddsm() -> DatasetEntry:
        return DatasetEntry(
            name="ddsm",
            description="a fourth dataset",
            id_columns={"patient_id": "pid", "image_id": "iid", "laterality": "side", "view": "view"},
            metadata_files=("ddsm.csv",),
            phantom_generator="mammoclip.phantoms.generate_rsna",
            phantom_size_key="n_patients",
            annotation_tables={"labels": "ddsm_labels.csv"},
            classifier_tables={"paper": "labels", "clean": "labels"},
            classifier_split="mammoclip.evaluate.protocols.split_rsna",
        )

    registry.register_label(LabelEntry("calcification", "ddsm", 1))
    assert callable(ddsm) and registry.list_datasets()[-1] == "ddsm"
    entry = registry.get_dataset("ddsm")
    assert entry.classifier_inputs("clean") == {"labels": "results/annotations/ddsm/ddsm_labels.csv"}
    assert [label.name for label in registry.labels_of("ddsm")] == ["calcification"]
