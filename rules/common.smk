import itertools
import os
import re
import sys
from pathlib import Path

# The package lives beside the Snakefile; jobs import it through workflow_scripts/_bootstrap.py.
sys.path.insert(0, workflow.basedir)

from mammoclip import registry
from mammoclip import resources as sizes
from mammoclip.resources import grow
from mammoclip.config import ConfigError, load_config
from mammoclip.datasets import DatasetError, check_dataset_files, resolve_dataset

try:
    config.update(load_config(config, base_dir=Path.cwd()))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

PHANTOM_DIR = config["phantoms"]["output_dir"]
# Datasets, labels and what differs between them: mammoclip/registry.py.
ENABLED_DATASETS = [
    d for d in registry.list_datasets() if config["datasets"][d]["enabled"]
]
SPECS = {
    d: resolve_dataset(d, config["datasets"][d], PHANTOM_DIR) for d in ENABLED_DATASETS
}
try:
    for _spec in SPECS.values():
        check_dataset_files(_spec)
except DatasetError as err:
    raise WorkflowError(str(err)) from None
SHARDS = list(range(config["preprocess"]["shards"]))
# Models evaluated downstream, by name: the configured checkpoint (its file stem), else our own
# pretraining's best checkpoint (rules/pretrain.smk), which needs the image+report data.
REPORT_DATASETS = [d for d in ENABLED_DATASETS if registry.get_dataset(d).reports]
PRETRAIN = not config["pretrained_checkpoint"] and bool(REPORT_DATASETS)
if config["pretrained_checkpoint"]:
    CHECKPOINTS = {
        Path(config["pretrained_checkpoint"]).stem: config["pretrained_checkpoint"]
    }
elif PRETRAIN:
    CHECKPOINTS = {"mammoclip": "results/pretrain/model-best.tar"}
else:
    CHECKPOINTS = {}
    logger.warning(
        "no model: set `pretrained_checkpoint` or enable the in-house dataset to pretrain one; "
        "embedding and scoring are skipped"
    )


wildcard_constraints:
    dataset="|".join(ENABLED_DATASETS) or "__none__",
    shard=r"\d+",
    model="|".join(re.escape(m) for m in CHECKPOINTS) or "__none__",


# Pretraining job size, from the experiment: 4 data-loading CPUs per GPU process; host memory for the
# loaders and the model copy per process; wall time from upstream's ~6 h per epoch of the B5 run on one
# GPU (its issue #27), divided over the GPUs, or 15 min per epoch for tiny CPU runs. Profiles may
# override any of them (--set-resources pretrain:runtime=...).
_GPUS = config["pretrain"]["gpus"]
PRETRAIN_THREADS = 4 * max(_GPUS, 1) if _GPUS else 2
PRETRAIN_MEM_MB = 16000 * max(_GPUS, 1) if _GPUS else 4000
PRETRAIN_RUNTIME_MIN = (
    config["pretrain"]["epochs"] * (360 // _GPUS if _GPUS else 15) + 30
)


def vindr_box_table_input():
    """``{"box_table": path}`` when upstream's box table is the VinDr box source, else nothing."""
    table = config["annotations"]["vindr_box_table"]
    return {"box_table": table} if table else {}


def metadata_csv(wildcards):
    """The metadata CSV listing a dataset's images (made by a phantom rule in the demo)."""
    return str(SPECS[wildcards.dataset].metadata_csv)


def dataset_spec(wildcards):
    """The dataset's spec as plain values (params must unpickle without this package)."""
    return SPECS[wildcards.dataset].to_params()


def pretrain_inputs(wildcards):
    """Tables, manifests and (demo) text model the pretraining job reads: the report table, with
    `pretrain.use_vindr` VinDr's image-label table, each with its manifest."""
    inputs = {
        "reports": rules.augment_reports.output.table,
        "reports_manifest": rules.prepare_reports.input.manifest,
    }
    if config["pretrain"]["use_vindr"]:
        inputs["vindr"] = rules.vindr_tables.output.image_labels
        inputs["vindr_manifest"] = rules.vindr_tables.input.manifest
    if config["pretrain"]["text_model"] == "tiny":
        inputs["text_model"] = rules.tiny_text_model.output.model
    return inputs


def zero_shot_tables(wildcards):
    """The annotation tables the dataset's zero-shot evaluation reads (registry)."""
    entry = registry.get_dataset(wildcards.dataset)
    if entry.zero_shot_evaluator is None:
        raise WorkflowError(f"no zero-shot labels for dataset {wildcards.dataset!r}")
    return entry.zero_shot_inputs()


# Downstream classifier runs: one job per (protocol, dataset, label, model, mode, fraction, fold, seed),
# enumerated from config so the wildcards' vocabularies are closed.
CLASSIFY = config["classify"]
CLASSIFY_LABELS = {
    label: settings
    for label, settings in CLASSIFY["labels"].items()
    if settings["enabled"] and registry.get_label(label).dataset in ENABLED_DATASETS
}
CLASSIFY_RUN = (
    "results/classify/{protocol}/{dataset}/{label}/{model}/{mode}/frac{frac}/"
    "fold{fold}_seed{seed}"
)


def format_fraction(fraction):
    """Fractions as path components: 0.1 -> '0.1', 1.0 -> '1'."""
    return f"{float(fraction):g}"


def classification_runs():
    """Every configured run as a dict of wildcard values."""
    runs = []
    for label, settings in CLASSIFY_LABELS.items():
        dataset = registry.get_label(label).dataset
        protocols = [
            p
            for p in CLASSIFY["protocols"]
            if p in registry.get_dataset(dataset).protocols
        ]
        for protocol, (mode, fractions) in itertools.product(
            protocols, settings["fractions"].items()
        ):
            for fraction, fold, seed, model in itertools.product(
                fractions,
                registry.classifier_folds(dataset, protocol, config),
                CLASSIFY["seeds"],
                CHECKPOINTS,
            ):
                runs.append(
                    dict(
                        protocol=protocol,
                        dataset=dataset,
                        label=label,
                        model=model,
                        mode=mode,
                        frac=format_fraction(fraction),
                        fold=fold,
                        seed=seed,
                    )
                )
    return runs


CLASSIFICATION_RUNS = classification_runs()


def classification_files(name, **only):
    """The `name` file (e.g. metrics.csv) of every run matching `only` (e.g. protocol="paper")."""
    return [
        f"{CLASSIFY_RUN.format(**run)}/{name}"
        for run in CLASSIFICATION_RUNS
        if all(str(run[k]) == str(v) for k, v in only.items())
    ]


def classifier_inputs(wildcards):
    """The annotation table the run's protocol reads (registry), the checkpoint and (linear probes on
    cached embeddings) the embeddings."""
    inputs = {
        **registry.get_dataset(wildcards.dataset).classifier_inputs(wildcards.protocol),
        "checkpoint": CHECKPOINTS[wildcards.model],
    }
    if wildcards.mode == "lp" and CLASSIFY["linear_probe_on_embeddings"]:
        inputs["embeddings"] = (
            f"results/embeddings/{wildcards.dataset}/{wildcards.model}."
            + config["inference"]["embedding_format"]
        )
    return inputs


def classifier_settings(wildcards):
    """Only this label's (and mode's) training settings, so editing one label reruns only its jobs."""
    settings = CLASSIFY["labels"][wildcards.label]
    merged = {
        k: v
        for k, v in settings.items()
        if k not in ("enabled", "fractions", "mode_overrides")
    }
    return {**merged, **settings.get("mode_overrides", {}).get(wildcards.mode, {})}


# ROC figures (rules/tables.smk): one per protocol and binary label with zero-shot evaluation sets
# (density is multiclass: none)
ROC_LABELS = [
    label
    for label in CLASSIFY_LABELS
    if registry.get_label(label).n_classes == 1
    and registry.get_dataset(registry.get_label(label).dataset).zero_shot_sets
]


def roc_plots(protocol=None):
    """roc_{label}.png of every ROC label under each protocol of its dataset (or under `protocol`)."""
    if not CHECKPOINTS:
        return []
    return [
        f"results/tables/{p}/roc_{label}.png"
        for p in CLASSIFY["protocols"]
        if protocol in (None, p)
        for label in ROC_LABELS
        if p in registry.get_dataset(registry.get_label(label).dataset).protocols
    ]


def roc_runs(wildcards):
    """The classifier runs of a ROC figure: the label's runs of the protocol at 100 % data."""
    return [
        run
        for run in CLASSIFICATION_RUNS
        if run["protocol"] == wildcards.protocol
        and run["label"] == wildcards.label
        and run["frac"] == format_fraction(1.0)
    ]


def roc_inputs(wildcards):
    """The runs' predictions, each model's prompt scores and the dataset's zero-shot tables."""
    dataset = registry.get_label(wildcards.label).dataset
    return {
        "predictions": [
            f"{CLASSIFY_RUN.format(**run)}/predictions.csv"
            for run in roc_runs(wildcards)
        ],
        "scores": [f"results/scores/{dataset}/{model}.csv" for model in CHECKPOINTS],
        **registry.get_dataset(dataset).zero_shot_inputs(),
    }


def _paper_model():
    """The paper's column our model is compared with (tables.paper_model, else from the encoder)."""
    if config["tables"]["paper_model"]:
        return config["tables"]["paper_model"]
    name = (
        Path(config["pretrained_checkpoint"]).name
        if config["pretrained_checkpoint"]
        else config["pretrain"]["image_encoder"]
    ).lower()
    base = "mc_enb2" if re.search(r"b2|v2", name) else "mc_enb5"
    with_vindr = not config["pretrained_checkpoint"] and config["pretrain"]["use_vindr"]
    return base + ("_vindr" if with_vindr else "")


PAPER_MODEL = _paper_model()
PAPER_RESULTS = config["tables"]["paper_results"] or str(
    Path(workflow.basedir) / "config" / "paper-results.csv"
)


# Job sizes for a scheduler (mammoclip/resources.py), from the number of images each dataset's metadata
# lists (phantoms: from their config, as the workflow generates them) and the image size.
def phantom_size(dataset):
    """The `phantoms.<dataset>` size setting (studies or patients) of a dataset's phantom."""
    return config["phantoms"][dataset][registry.get_dataset(dataset).phantom_size_key]


IMAGE_COUNTS = {
    d: (
        registry.get_dataset(d).images_per_size_unit * phantom_size(d)
        if SPECS[d].source == "phantom"
        else sizes.count_rows(SPECS[d].metadata_csv, default=1000)
    )
    for d in ENABLED_DATASETS
}
PIXELS = config["preprocess"]["height"] * config["preprocess"]["width"]
BACK_TRANSLATION_GPUS = (
    config["reports"]["augmentation"]["gpus"]
    if config["reports"]["augmentation"]["method"] == "back_translation"
    else 0
)


def dataset_table_resources(dataset):
    return sizes.table_resources(IMAGE_COUNTS.get(dataset, 1000))


def classifier_runtime(wildcards):
    settings = classifier_settings(wildcards)
    return sizes.classifier_runtime(
        images=IMAGE_COUNTS[wildcards.dataset],
        fraction=float(wildcards.frac),
        epochs=settings["epochs"],
        mode=wildcards.mode,
        pixels=PIXELS,
        gpus=CLASSIFY["gpus"],
        cached=wildcards.mode == "lp" and CLASSIFY["linear_probe_on_embeddings"],
    )


CLASSIFY_THREADS = max(CLASSIFY["num_workers"], 1)
CLASSIFY_MEM_MB = 16000 if CLASSIFY["gpus"] else 4000


# Detector runs (rules/detect.smk): one job per (protocol, dataset, label, model, mode, fraction, fold,
# seed) for the labels with a detection category (registry), enumerated from config.
DETECT = config["detect"]
DETECT_LABELS = {
    label: settings
    for label, settings in DETECT["labels"].items()
    if settings["enabled"]
    and registry.get_label(label).detection_category
    and registry.get_label(label).dataset in ENABLED_DATASETS
}
DETECT_RUN = (
    "results/detect/{protocol}/{dataset}/{label}/{model}/{mode}/frac{frac}/"
    "fold{fold}_seed{seed}"
)


def detection_runs():
    """Every configured detector run as a dict of wildcard values."""
    runs = []
    for label, settings in DETECT_LABELS.items():
        dataset = registry.get_label(label).dataset
        for protocol, (mode, fractions) in itertools.product(
            DETECT["protocols"], settings["fractions"].items()
        ):
            for fraction, fold, seed, model in itertools.product(
                fractions,
                registry.detection_folds(dataset, protocol, config),
                DETECT["seeds"],
                CHECKPOINTS,
            ):
                runs.append(
                    dict(
                        protocol=protocol,
                        dataset=dataset,
                        label=label,
                        model=model,
                        mode=mode,
                        frac=format_fraction(fraction),
                        fold=fold,
                        seed=seed,
                    )
                )
    return runs


DETECTION_RUNS = detection_runs()
# labels with at least one run: one FROC plot and one detection panel each
DETECT_PLOT_LABELS = list(dict.fromkeys(run["label"] for run in DETECTION_RUNS))
DETECT_DATASETS = list(dict.fromkeys(run["dataset"] for run in DETECTION_RUNS))
if len(DETECT_DATASETS) > 1:
    raise WorkflowError(f"detection tables read one dataset, got {DETECT_DATASETS}")


def detection_files(name, **only):
    """The `name` file (e.g. metrics.csv) of every detector run matching `only` (e.g. protocol="clean")."""
    return [
        f"{DETECT_RUN.format(**run)}/{name}"
        for run in DETECTION_RUNS
        if all(str(run[k]) == str(v) for k, v in only.items())
    ]


def detector_inputs(wildcards):
    """The image and box tables detection reads (registry) and the checkpoint."""
    return {
        **registry.get_dataset(wildcards.dataset).detection_inputs(),
        "checkpoint": CHECKPOINTS[wildcards.model],
    }


def detection_table_inputs(wildcards):
    """The image and box tables of the detection dataset (for FROC curves and panels)."""
    return {
        k: v
        for dataset in DETECT_DATASETS
        for k, v in registry.get_dataset(dataset).detection_inputs().items()
    }


def detector_settings(wildcards):
    """Only this label's (and mode's) detector settings, so editing one label reruns only its jobs."""
    settings = DETECT["labels"][wildcards.label]
    merged = {
        k: v
        for k, v in settings.items()
        if k not in ("enabled", "fractions", "mode_overrides")
    }
    return {**merged, **settings.get("mode_overrides", {}).get(wildcards.mode, {})}


def detector_runtime(wildcards):
    settings = detector_settings(wildcards)
    images = IMAGE_COUNTS[wildcards.dataset]
    return sizes.detector_runtime(
        images=images,
        select_images=images // 5,
        fraction=float(wildcards.frac),
        epochs=settings["epochs"],
        mode=wildcards.mode,
        pixels=settings["input_height"] * settings["input_width"],
        gpus=DETECT["gpus"],
    )


DETECT_THREADS = max(DETECT["num_workers"], 1)
DETECT_MEM_MB = 16000 if DETECT["gpus"] else 4000


# Mammo-FActOR (rules/factor.smk): attribute embeddings per model, one mapper and one localisation run per
# (protocol, model, seed) on VinDr, one localisation table per protocol.
FACTOR = config["factor"]
FACTOR_RUN = "results/factor/{protocol}/{model}/seed{seed}"
FACTOR_RUNS = (
    [
        dict(protocol=protocol, model=model, seed=seed)
        for protocol, model, seed in itertools.product(
            FACTOR["protocols"], CHECKPOINTS, FACTOR["seeds"]
        )
    ]
    if FACTOR["enabled"] and "vindr" in ENABLED_DATASETS
    else []
)
# one overlay panel per attribute (the schema allows only attributes with VinDr boxes)
FACTOR_ATTRIBUTES = list(FACTOR["attributes"])
# what the mapper's training depends on; evaluation settings (percentile, thresholds, ...) rerun only the
# localisation jobs
FACTOR_TRAINING_KEYS = (
    "fold",
    "epochs",
    "patience",
    "batch_size",
    "lr",
    "weight_decay",
    "temperature",
    "input_height",
    "input_width",
    "feature_stride",
    "top_k",
    "cache_features",
)
FACTOR_EVALUATION_KEYS = ("fold", "percentile", "iou_thresholds", "n_boot")
FACTOR_THREADS = max(FACTOR["num_workers"], 1)
FACTOR_MEM_MB = 16000 if FACTOR["gpus"] else 4000
# one B5 pass over ~16k VinDr training images per epoch (uncached) on a GPU, else a tiny CPU run
FACTOR_RUNTIME_MIN = (
    FACTOR["epochs"] * 30 + 30 if FACTOR["gpus"] else FACTOR["epochs"] * 2 + 10
)


def factor_files(name, **only):
    """The `name` file of every localisation run matching `only` (e.g. protocol="clean")."""
    return [
        f"{FACTOR_RUN.format(**run)}/{name}"
        for run in FACTOR_RUNS
        if all(str(run[k]) == str(v) for k, v in only.items())
    ]


def factor_inputs(wildcards):
    """VinDr's image and box tables, the checkpoint and its attribute embeddings."""
    return {
        **registry.get_dataset("vindr").detection_inputs(),
        "checkpoint": CHECKPOINTS[wildcards.model],
        "embeddings": f"results/factor/{wildcards.model}/attribute_embeddings.npz",
    }
