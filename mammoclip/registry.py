"""What differs per dataset and per label, in one place (in the spirit of timm's model registry).

One :class:`DatasetEntry` per dataset says where its metadata is, how its phantom is generated, which
annotation tables its annotation rule writes, which of them the classifiers and the zero-shot evaluation
read, which tables its detectors read, and its fold policy; one :class:`LabelEntry` per label of the
paper's tables says its dataset, kind and (for detection) the finding category its boxes carry. The
Snakefile, the stages and the evaluation read these entries instead of branching on dataset names, so
a new dataset is one :func:`register_dataset` call plus its reader/annotation stage.

Imported while Snakemake builds the DAG: no heavy imports here (functions are named by dotted path and
imported only when called, :func:`resolve`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANNOTATIONS_DIR",
    "DatasetEntry",
    "LabelEntry",
    "classifier_folds",
    "detection_folds",
    "detection_labels",
    "get_dataset",
    "get_label",
    "labels_of",
    "list_datasets",
    "list_labels",
    "register_dataset",
    "register_label",
    "resolve",
    "zero_shot_tasks",
]

#: annotation tables live in ``{ANNOTATIONS_DIR}/{dataset}/``, next to the rule's ``provenance.json``
ANNOTATIONS_DIR = "results/annotations"


@dataclass(frozen=True)
class DatasetEntry:
    """Everything the workflow needs to know about one dataset."""

    name: str
    description: str
    #: our common identifiers -> the metadata CSV's columns
    id_columns: Mapping[str, str]
    #: files the dataset's root holds (phantoms: the phantom rule's metadata outputs)
    metadata_files: tuple[str, ...]
    #: ``module.function`` writing a phantom of the dataset: ``fn(out_dir, *, <size_key>=n, ...)``
    phantom_generator: str
    #: the ``phantoms.<name>`` config key (and generator argument) giving the phantom's size
    phantom_size_key: str
    #: further ``phantoms.<name>`` config keys passed on to the generator
    phantom_options: tuple[str, ...] = ()
    #: images per unit of ``phantom_size_key`` (a study / patient: L/R x CC/MLO)
    images_per_size_unit: int = 4
    #: ``{key: file name}`` of the tables its annotation rule writes into ``{ANNOTATIONS_DIR}/{name}/``
    annotation_tables: Mapping[str, str] = field(default_factory=dict)
    #: ``{protocol: table key}``: the table a classifier run reads; its keys are the protocols that apply
    classifier_tables: Mapping[str, str] = field(default_factory=dict)
    #: ``module.function`` splitting a classifier table: ``fn(table, *, protocol, fold) -> parts``
    classifier_split: str | None = None
    #: classifier metrics also per breast (mean probability per patient and laterality), as primary
    breast_level: bool = False
    #: table keys the zero-shot evaluator reads (passed to it as keyword arguments)
    zero_shot_tables: tuple[str, ...] = ()
    #: ``module.function``: ``fn(scores, **tables, seed=...) -> results``
    zero_shot_evaluator: str | None = None
    #: ``module.function``: ``fn(scores, **tables) -> [EvaluationSet]``, the rows the evaluator's binary
    #: AUROCs are computed on (:mod:`mammoclip.evaluate.zeroshot`; the report's ROC curves use them)
    zero_shot_sets: str | None = None
    #: config key (dotted) listing the folds the clean protocol reports
    clean_folds_key: str | None = None
    #: config key (dotted) with the number of folds, used when the clean folds are empty (null)
    all_folds_key: str | None = None
    #: holds image+report pairs (the pretraining corpus)
    reports: bool = False
    #: ``{"images": key, "boxes": key}``: the annotation tables a detector run reads, the image table (one
    #: row per image: ``patient_id``, ``image_id``, ``split``, ``val_fold``, ``png_path``) and the box table
    #: (one row per box: ``image_id``, ``finding_categories``, the box in PNG pixels ``resized_*``)
    detection_tables: Mapping[str, str] = field(default_factory=dict)
    #: config key (dotted) listing the validation folds the clean detection protocol selects on
    detection_folds_key: str | None = None

    def __post_init__(self) -> None:
        if self.detection_tables and set(self.detection_tables) != {"images", "boxes"}:
            raise ValueError(f"dataset {self.name!r}: detection_tables needs the keys images and boxes")
        unknown = set(self.classifier_tables.values()) | set(self.zero_shot_tables)
        unknown |= set(self.detection_tables.values())
        unknown -= set(self.annotation_tables)
        if unknown:
            raise ValueError(f"dataset {self.name!r}: tables {sorted(unknown)} are not annotation tables")

    @property
    def protocols(self) -> tuple[str, ...]:
        """The classifier protocols that apply to the dataset (none: no classifier runs)."""
        return tuple(self.classifier_tables)

    @property
    def annotation_dir(self) -> str:
        return f"{ANNOTATIONS_DIR}/{self.name}"

    def annotation_path(self, key: str) -> str:
        """Path of annotation table ``key`` (e.g. ``rows``)."""
        return f"{self.annotation_dir}/{self.annotation_tables[key]}"

    def annotation_outputs(self) -> dict[str, str]:
        """``{key: path}`` of every annotation table."""
        return {key: self.annotation_path(key) for key in self.annotation_tables}

    @property
    def annotation_provenance(self) -> str:
        return f"{self.annotation_dir}/provenance.json"

    def classifier_inputs(self, protocol: str) -> dict[str, str]:
        """``{key: path}`` of the table a classifier run under ``protocol`` reads."""
        key = self.classifier_tables[protocol]
        return {key: self.annotation_path(key)}

    def zero_shot_inputs(self) -> dict[str, str]:
        """``{key: path}`` of the tables the zero-shot evaluation reads."""
        return {key: self.annotation_path(key) for key in self.zero_shot_tables}

    def detection_inputs(self) -> dict[str, str]:
        """``{"images": path, "boxes": path}`` of the tables a detector run reads (none: no detection)."""
        return {role: self.annotation_path(key) for role, key in self.detection_tables.items()}


@dataclass(frozen=True)
class LabelEntry:
    """A label of the paper's classification tables."""

    name: str
    dataset: str
    n_classes: int  # 1 = binary (one logit)
    #: the scoring task (``inference.prompts`` key) evaluated against this label zero-shot
    zero_shot_task: str | None = None
    #: the finding category (as the dataset's box table spells it) a detector of this label localises;
    #: None: no detector for the label
    detection_category: str | None = None


_DATASETS: dict[str, DatasetEntry] = {}
_LABELS: dict[str, LabelEntry] = {}


def register_dataset(entry: DatasetEntry | Callable[[], DatasetEntry]) -> Any:
    """Register a dataset: ``register_dataset(DatasetEntry(...))``, or as a decorator of a function
    returning the entry (the function is returned unchanged)."""
    made = entry() if callable(entry) and not isinstance(entry, DatasetEntry) else entry
    if made.name in _DATASETS:
        raise ValueError(f"dataset {made.name!r} is registered twice")
    _DATASETS[made.name] = made
    return entry


def register_label(entry: LabelEntry) -> LabelEntry:
    if entry.name in _LABELS:
        raise ValueError(f"label {entry.name!r} is registered twice")
    if entry.dataset not in _DATASETS:
        raise ValueError(f"label {entry.name!r}: unknown dataset {entry.dataset!r}")
    _LABELS[entry.name] = entry
    return entry


def list_datasets() -> list[str]:
    """Dataset names, in registration order."""
    return list(_DATASETS)


def get_dataset(name: str) -> DatasetEntry:
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(_DATASETS)}") from None


def list_labels() -> list[str]:
    """Label names, in registration order."""
    return list(_LABELS)


def get_label(name: str) -> LabelEntry:
    try:
        return _LABELS[name]
    except KeyError:
        raise ValueError(f"unknown label {name!r}; known labels: {sorted(_LABELS)}") from None


def labels_of(dataset: str) -> list[LabelEntry]:
    """The labels of ``dataset``, in registration order."""
    return [label for label in _LABELS.values() if label.dataset == dataset]


def detection_labels(dataset: str | None = None) -> list[LabelEntry]:
    """The labels with a detector (a ``detection_category``), of ``dataset`` or of every dataset."""
    return [
        label
        for label in _LABELS.values()
        if label.detection_category and (dataset is None or label.dataset == dataset)
    ]


def zero_shot_tasks(dataset: str) -> dict[str, str]:
    """``{scoring task: label}`` evaluated zero-shot on ``dataset``."""
    return {label.zero_shot_task: label.name for label in labels_of(dataset) if label.zero_shot_task}


def resolve(dotted: str) -> Any:
    """The object named ``package.module.name`` (imported now)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def classifier_folds(dataset: str, protocol: str, config: Mapping[str, Any]) -> list[int]:
    """Folds of ``dataset`` a classifier runs under ``protocol``: fold 0 for ``paper`` (upstream's one
    split); for ``clean`` the configured folds, or every fold when none are configured."""
    entry = get_dataset(dataset)
    if protocol == "paper":
        return [0]
    folds = _config_value(config, entry.clean_folds_key) if entry.clean_folds_key else []
    if not folds and entry.all_folds_key:
        return list(range(_config_value(config, entry.all_folds_key)))
    return list(folds)


def detection_folds(dataset: str, protocol: str, config: Mapping[str, Any]) -> list[int]:
    """Folds of ``dataset`` a detector runs under ``protocol``: fold 0 for ``paper`` (one split, selected
    on the test images); for ``clean`` the configured validation folds."""
    entry = get_dataset(dataset)
    if protocol == "paper" or not entry.detection_folds_key:
        return [0]
    return list(_config_value(config, entry.detection_folds_key))


# --------------------------------------------------------------------------------------------------
# The datasets
# --------------------------------------------------------------------------------------------------


def split_vindr_run(table: Any, *, protocol: str, fold: int) -> dict[str, Any]:
    """VinDr's classifier parts: the paper protocol has one split (fold 0); clean validates on ``fold``."""
    from mammoclip.evaluate.protocols import split_vindr

    if protocol == "paper" and fold != 0:
        raise ValueError(f"the paper protocol has one VinDr split (fold 0), got fold {fold}")
    return split_vindr(table, protocol=protocol, val_fold=fold if protocol == "clean" else 0)


register_dataset(
    DatasetEntry(
        name="vindr",
        description="VinDr-Mammo: breast- and finding-level annotations with boxes",
        id_columns={
            "patient_id": "study_id",
            "image_id": "image_id",
            "laterality": "laterality",
            "view": "view_position",
        },
        metadata_files=("breast-level_annotations.csv", "finding_annotations.csv"),
        phantom_generator="mammoclip.phantoms.generate_vindr",
        phantom_size_key="n_studies",
        phantom_options=("test_fraction",),
        annotation_tables={
            "rows": "vindr_detection_v1_folds.csv",
            "images": "vindr_images.csv",
            "boxes": "vindr_boxes.csv",
            "image_labels": "clip_vindr_final.csv",
        },
        classifier_tables={"paper": "rows", "clean": "images"},
        classifier_split="mammoclip.registry.split_vindr_run",
        zero_shot_tables=("rows", "images"),
        zero_shot_evaluator="mammoclip.evaluate.zeroshot.evaluate_vindr",
        zero_shot_sets="mammoclip.evaluate.zeroshot.vindr_sets",
        clean_folds_key="classify.vindr_clean_folds",
        detection_tables={"images": "images", "boxes": "boxes"},
        detection_folds_key="detect.folds",
    )
)
register_dataset(
    DatasetEntry(
        name="rsna",
        description="RSNA Screening Mammography: cancer labels, patient-grouped folds",
        id_columns={
            "patient_id": "patient_id",
            "image_id": "image_id",
            "laterality": "laterality",
            "view": "view",
        },
        metadata_files=("train.csv",),
        phantom_generator="mammoclip.phantoms.generate_rsna",
        phantom_size_key="n_patients",
        annotation_tables={"folds": "train_folds.csv"},
        classifier_tables={"paper": "folds", "clean": "folds"},
        classifier_split="mammoclip.evaluate.protocols.split_rsna",
        breast_level=True,
        zero_shot_tables=("folds",),
        zero_shot_evaluator="mammoclip.evaluate.zeroshot.evaluate_rsna",
        zero_shot_sets="mammoclip.evaluate.zeroshot.rsna_sets",
        clean_folds_key="classify.rsna_clean_folds",
        all_folds_key="annotations.rsna_folds",
    )
)
register_dataset(
    DatasetEntry(
        name="inhouse",
        description="in-house image+report pairs (the pretraining corpus)",
        id_columns={
            "patient_id": "patient_id",
            "image_id": "image_id",
            "laterality": "laterality",
            "view": "view",
        },
        metadata_files=("reports.csv",),
        phantom_generator="mammoclip.phantoms.generate_inhouse",
        phantom_size_key="n_patients",
        reports=True,
    )
)

# --------------------------------------------------------------------------------------------------
# The labels of the paper's classification and detection tables
# --------------------------------------------------------------------------------------------------

register_label(LabelEntry("Mass", "vindr", 1, zero_shot_task="mass", detection_category="Mass"))
register_label(
    LabelEntry(
        "Suspicious_Calcification",
        "vindr",
        1,
        zero_shot_task="suspicious_calcification",
        detection_category="Suspicious Calcification",
    )
)
register_label(LabelEntry("density", "vindr", 4, zero_shot_task="density"))
register_label(LabelEntry("cancer", "rsna", 1, zero_shot_task="malignancy"))
