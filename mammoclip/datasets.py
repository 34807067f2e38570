"""Where each dataset's images are, and the per-image table the preprocessing stage works through.

Each dataset lists its images in a metadata CSV (layouts: docs/upstream.md#vindr-annotations, #rsna) and
keeps the files in a tree described by a path template filled with the CSV's columns, e.g.
``images/{study_id}/{image_id}.dicom``; which columns hold our identifiers is its :mod:`mammoclip.registry`
entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammoclip import registry

IMAGE_TABLE_COLUMNS = ["image_id", "patient_id", "laterality", "view", "source_path", "png_path"]


class DatasetError(ValueError):
    """A dataset's files do not match what the configuration says."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset resolved from the config: what kind of input it is and where it lives."""

    name: str
    source: str  # "phantom", "dicom" or "png"
    root: Path
    metadata_csv: Path
    template: str  # image path template relative to root

    def to_params(self) -> dict[str, str]:
        """Plain values, for passing through Snakemake params."""
        return {f: str(getattr(self, f)) for f in ("name", "source", "root", "metadata_csv", "template")}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DatasetSpec:
        return cls(
            params["name"],
            params["source"],
            Path(params["root"]),
            Path(params["metadata_csv"]),
            params["template"],
        )

    @property
    def converts(self) -> bool:
        """True when the images are DICOMs to convert; False for an already-converted PNG release."""
        return self.source != "png"


def resolve_dataset(name: str, settings: dict[str, Any], phantom_dir: str | Path) -> DatasetSpec:
    """Build the spec of dataset ``name`` from its (schema-validated) config section ``settings``."""
    if name not in registry.list_datasets():
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(registry.list_datasets())}")
    source = settings["source"]
    root = Path(phantom_dir) / name if source == "phantom" else Path(settings["root"])
    template = settings["png_template"] if source == "png" else settings["dicom_template"]
    return DatasetSpec(name, source, root, root / settings["metadata_csv"], template)


def check_dataset_files(spec: DatasetSpec) -> None:
    """For real (non-phantom) data, fail early when the metadata CSV is missing."""
    if spec.source != "phantom" and not spec.metadata_csv.is_file():
        raise DatasetError(
            f"config key 'datasets.{spec.name}.metadata_csv': file {spec.metadata_csv} does not exist"
        )


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read a metadata CSV keeping identifiers as strings (RSNA's integer ids must not become floats)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def list_images(spec: DatasetSpec, metadata: pd.DataFrame, *, png_root: str | Path) -> pd.DataFrame:
    """One row per image: identifiers, the source file and the PNG it becomes.

    For a PNG release the source is the PNG itself and nothing is written.
    """
    columns = registry.get_dataset(spec.name).id_columns
    missing = sorted(set(columns.values()) - set(metadata.columns))
    if missing:
        raise DatasetError(f"{spec.metadata_csv}: missing column(s) {', '.join(missing)}")
    duplicated = metadata[columns["image_id"]][metadata[columns["image_id"]].duplicated()]
    if len(duplicated):
        raise DatasetError(
            f"{spec.metadata_csv}: {len(duplicated)} duplicated image id(s) in column "
            f"{columns['image_id']!r} (one row per image expected), e.g. {', '.join(duplicated.iloc[:3])}"
        )
    images = pd.DataFrame({ours: metadata[theirs].astype(str) for ours, theirs in columns.items()})
    rows = metadata.to_dict("records")
    try:
        sources = [str(spec.root / spec.template.format(**row)) for row in rows]
    except KeyError as err:
        raise DatasetError(
            f"path template {spec.template!r} of dataset {spec.name} names column {err} that "
            f"{spec.metadata_csv} does not have"
        ) from None
    images["source_path"] = sources
    if spec.converts:
        png_root = Path(png_root)
        images["png_path"] = [
            str(png_root / p / f"{i}.png")
            for p, i in zip(images["patient_id"], images["image_id"], strict=True)
        ]
    else:
        images["png_path"] = images["source_path"]
    return images[IMAGE_TABLE_COLUMNS]


def select_shard(images: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """The ``shard``-th of ``n_shards`` contiguous, near-equal blocks of ``images`` (input order kept)."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} outside 0..{n_shards - 1}")
    bounds = np.linspace(0, len(images), n_shards + 1).round().astype(int)
    return images.iloc[bounds[shard] : bounds[shard + 1]].reset_index(drop=True)
