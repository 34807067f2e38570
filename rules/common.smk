import os
import re
import sys
from pathlib import Path

# The package lives beside the Snakefile; jobs import it through workflow_scripts/_bootstrap.py.
sys.path.insert(0, workflow.basedir)

from mammoclip.config import ConfigError, load_config
from mammoclip.datasets import (
    DATASETS,
    DatasetError,
    check_dataset_files,
    resolve_dataset,
)

try:
    config.update(load_config(config, base_dir=Path.cwd()))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

PHANTOM_DIR = config["phantoms"]["output_dir"]
ENABLED_DATASETS = [d for d in DATASETS if config["datasets"][d]["enabled"]]
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
# pretraining's best checkpoint (rules/pretrain.smk), which needs the in-house image+report data.
PRETRAIN = not config["pretrained_checkpoint"] and "inhouse" in ENABLED_DATASETS
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


def metadata_csv(wildcards):
    """The metadata CSV listing a dataset's images (made by a phantom rule in the demo)."""
    return str(SPECS[wildcards.dataset].metadata_csv)


def dataset_spec(wildcards):
    """The dataset's spec as plain values (params must unpickle without this package)."""
    return SPECS[wildcards.dataset].to_params()


def pretrain_inputs(wildcards):
    """Tables, manifests and (demo) text model the pretraining job reads."""
    inputs = {
        "reports": "results/reports/inhouse/clip_pretrain.csv",
        "reports_manifest": "results/preprocess/inhouse/manifest.csv",
    }
    if config["pretrain"]["use_vindr"]:
        inputs["vindr"] = "results/annotations/vindr/clip_vindr_final.csv"
        inputs["vindr_manifest"] = "results/preprocess/vindr/manifest.csv"
    if config["pretrain"]["text_model"] == "tiny":
        inputs["text_model"] = "results/pretrain/text-model"
    return inputs
