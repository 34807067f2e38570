"""Stage-level functions: each composes the package's single-purpose functions for one Snakemake rule.

Workflow scripts only unpack the ``snakemake`` object and call one of these, so everything a rule does can
be run and tested without Snakemake.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mammoclip import phantoms
from mammoclip.datasets import DatasetSpec, list_images, read_metadata, select_shard
from mammoclip.preprocess import check_failures, convert_shard, join_manifests

log = logging.getLogger(__name__)


def generate_phantom_dataset(
    name: str,
    out_dir: str | Path,
    *,
    size: int,
    image_scale: float,
    seed: int,
    transfer_syntaxes: Sequence[str],
    test_fraction: float = 0.2,
) -> pd.DataFrame:
    """Generate phantom dataset ``name`` (vindr, rsna or inhouse) of ``size`` studies/patients."""
    common = {"image_scale": image_scale, "seed": seed, "transfer_syntaxes": tuple(transfer_syntaxes)}
    out_dir = Path(out_dir)
    if name == "vindr":
        truth = phantoms.generate_vindr(
            out_dir, n_studies=size, test_fraction=test_fraction, progress=True, **common
        )
    elif name == "rsna":
        truth = phantoms.generate_rsna(out_dir, n_patients=size, progress=True, **common)
    elif name == "inhouse":
        truth = phantoms.generate_inhouse(out_dir, n_patients=size, progress=True, **common)
    else:
        raise ValueError(f"no phantom generator for dataset {name!r}")
    log.info("generated phantom %s: %d images in %s", name, len(truth), out_dir)
    return truth


def preprocess_shard(
    spec: DatasetSpec,
    *,
    shard: int,
    n_shards: int,
    png_root: str | Path,
    width: int,
    height: int,
    legacy: bool,
    processes: int,
) -> pd.DataFrame:
    """Convert (or, for a PNG release, check) the images of one shard with ``processes`` workers."""
    images = list_images(spec, read_metadata(spec.metadata_csv), png_root=png_root)
    part = select_shard(images, shard, n_shards)
    log.info(
        "%s shard %d/%d: %d of %d images from %s (%s)",
        spec.name,
        shard,
        n_shards,
        len(part),
        len(images),
        spec.root,
        spec.source,
    )
    manifest = convert_shard(part, width=width, height=height, legacy=legacy, processes=processes)
    failed = manifest[manifest["status"] != "ok"]
    for row in failed.itertuples():
        log.warning("failed: %s (%s)", row.source_path, row.reason)
    log.info("%s shard %d: %d ok, %d failed", spec.name, shard, len(manifest) - len(failed), len(failed))
    return manifest


def join_preprocess_manifests(paths: Sequence[str | Path], *, max_failed_fraction: float) -> pd.DataFrame:
    """Join shard manifests; fail with the list of bad files when too many images failed."""
    manifest = join_manifests(paths)
    check_failures(manifest, max_failed_fraction)
    n_failed = int((manifest["status"] != "ok").sum())
    log.info(
        "manifest: %d images, %d failed (limit %.1f%%)", len(manifest), n_failed, 100 * max_failed_fraction
    )
    return manifest
