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
# Models evaluated downstream, by name (the checkpoint's file stem).
CHECKPOINTS = {}
if config["pretrained_checkpoint"]:
    CHECKPOINTS[Path(config["pretrained_checkpoint"]).stem] = config[
        "pretrained_checkpoint"
    ]


wildcard_constraints:
    dataset="|".join(ENABLED_DATASETS) or "__none__",
    shard=r"\d+",
    model="|".join(re.escape(m) for m in CHECKPOINTS) or "__none__",


def metadata_csv(wildcards):
    """The metadata CSV listing a dataset's images (made by a phantom rule in the demo)."""
    return str(SPECS[wildcards.dataset].metadata_csv)


def dataset_spec(wildcards):
    """The dataset's spec as plain values (params must unpickle without this package)."""
    return SPECS[wildcards.dataset].to_params()
