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
from mammoclip.preprocess import check_failures, convert_shard, join_manifests, read_manifest

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


def prepare_report_table(
    reports_csv: str | Path, manifest_csv: str | Path, *, legacy: bool, n_folds: int
) -> pd.DataFrame:
    """Clean the in-house reports and group them per breast, keeping only converted images."""
    from mammoclip.annotations.reports import (
        build_pretraining_table,
        png_paths_from_manifest,
        read_reports_csv,
    )

    png_paths = png_paths_from_manifest(read_manifest(manifest_csv), log)
    return build_pretraining_table(
        read_reports_csv(reports_csv), legacy=legacy, png_paths=png_paths, n_folds=n_folds, logger=log
    )


def augment_report_table(
    table_csv: str | Path,
    *,
    method: str,
    language: str,
    model_dir: str | None,
    temperature: float,
    num_beams: int,
    batch_size: int,
    seed: int,
) -> pd.DataFrame:
    """Add ``text_augment`` by back-translation (or a copy of ``text`` when ``method`` is ``none``)."""
    from mammoclip.annotations.augment import augment_table, make_back_translator
    from mammoclip.annotations.reports import read_pretraining_table

    table = read_pretraining_table(table_csv)
    if method == "none":
        log.info("augmentation: none (text_augment = text)")
        return augment_table(table, translate=list)
    translate = make_back_translator(
        language,
        model_dir=model_dir,
        temperature=temperature,
        num_beams=num_beams,
        batch_size=batch_size,
        seed=seed,
    )
    return augment_table(table, translate=translate)


def prepare_vindr_tables(
    breast_csv: str | Path,
    findings_csv: str | Path,
    manifest_csv: str | Path,
    *,
    n_folds: int,
    seed: int,
    legacy: bool = False,
    box_table: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """VinDr's row-level (upstream granularity), image-level, box and image-label tables.

    Boxes are mapped into the PNG frame with the crop boxes of the preprocessing manifest (upstream's
    arithmetic with ``legacy``), or taken from upstream's row table ``box_table`` (validated against the
    annotations) for the authors' PNG release; images that failed conversion are excluded and counted in
    the log. ``legacy`` keeps boxes that stick out of the image as they are (else clipped). The tables'
    ``attrs["box_summary"]`` says where the boxes came from and what was clipped.
    """
    from mammoclip.annotations.vindr import (
        boxes_from_release_table,
        map_boxes_to_png,
        read_release_box_table,
        read_vindr_annotations,
        vindr_image_label_table,
        vindr_image_table,
        vindr_row_table,
    )

    breast, findings = read_vindr_annotations(breast_csv, findings_csv, clip_boxes=not legacy)
    manifest = read_manifest(manifest_csv)
    if box_table:
        release = read_release_box_table(box_table)
        mapped = boxes_from_release_table(findings, release, manifest, legacy=legacy)
    else:
        mapped = map_boxes_to_png(findings, manifest, legacy=legacy)
    rows = vindr_row_table(breast, mapped, manifest, n_folds=n_folds, seed=seed)
    images, boxes = vindr_image_table(breast, mapped, manifest, n_folds=n_folds, seed=seed)
    labels = vindr_image_label_table(images)
    log.info(
        "VinDr tables: %d finding rows, %d images, %d boxes, %d breasts",
        len(rows),
        len(images),
        len(boxes),
        len(labels),
    )
    summary = {
        "box_source": str(box_table) if box_table else "manifest crop boxes",
        "box_mapping": "legacy (upstream's arithmetic)" if legacy else "corrected",
        "boxes_beyond_image": findings.attrs["clipped_boxes"],
        "boxes_clipped_to_image": findings.attrs["boxes_clipped"],
        "boxes_mapped": int(boxes["resized_xmin"].notna().sum()),
        "boxes_without_png_box": int(boxes["resized_xmin"].isna().sum()),
    }
    if box_table:
        summary["truncated_ymax_in_box_table"] = mapped.attrs.get("truncated_ymax", 0)
    tables = {"rows": rows, "images": images, "boxes": boxes, "image_labels": labels}
    for table in tables.values():
        table.attrs["box_summary"] = summary
    return tables


def prepare_rsna_folds(
    train_csv: str | Path,
    manifest_csv: str | Path,
    *,
    n_folds: int,
    seed: int,
    fold_file: str | Path | None = None,
) -> pd.DataFrame:
    """RSNA's train.csv with patient-grouped, cancer-stratified folds (or a validated user fold file)."""
    from mammoclip.annotations.rsna import (
        join_rsna_manifest,
        make_rsna_folds,
        read_rsna_folds,
        read_rsna_train,
        validate_fold_file,
    )

    train = read_rsna_train(train_csv)
    if fold_file:
        folds = validate_fold_file(read_rsna_folds(fold_file), train)
        log.info("RSNA folds from %s (validated)", fold_file)
    else:
        folds = make_rsna_folds(train, n_folds=n_folds, seed=seed)
    return join_rsna_manifest(folds, read_manifest(manifest_csv))


def embed_dataset(
    manifest_csv: str | Path,
    checkpoint: str | Path,
    output: str | Path,
    *,
    height: int,
    width: int,
    batch_size: int,
    text_backbone: str,
    threads: int = 1,
) -> None:
    """Raw and projected embeddings of every converted image of a dataset, with provenance metadata."""
    import torch

    from mammoclip.checkpoints import load_clip
    from mammoclip.inference import embed_images, list_inputs, write_embeddings
    from mammoclip.provenance import provenance

    torch.set_num_threads(max(threads, 1))
    inputs = list_inputs(manifest_csv)
    model, _, info = load_clip(checkpoint, text_backbone=text_backbone)
    raw, projected = embed_images(model, inputs, height=height, width=width, batch_size=batch_size)
    metadata = provenance(checkpoint=str(checkpoint), data=str(manifest_csv), height=height, width=width)
    write_embeddings(output, inputs["image_id"], raw, projected, metadata)
    log.info(
        "embedded %d images with %s: raw %s, projected %s",
        len(inputs),
        checkpoint,
        raw.shape,
        projected.shape,
    )


def score_dataset(
    embeddings: str | Path,
    checkpoint: str | Path,
    *,
    prompts: dict[str, dict[str, list[str]]],
    text_backbone: str,
) -> pd.DataFrame:
    """Per-image class probabilities of every prompt task, from stored embeddings."""
    from mammoclip.checkpoints import load_clip
    from mammoclip.inference import read_embeddings, score_embeddings
    from mammoclip.provenance import code_version

    image_ids, _, projected, _ = read_embeddings(embeddings)
    model, tokenizer, _ = load_clip(checkpoint, text_backbone=text_backbone)
    scores = score_embeddings(model, tokenizer, image_ids, projected, prompts)
    scores["checkpoint"] = str(checkpoint)
    scores["code_version"] = code_version()
    log.info("scored %d images on %d task(s)", len(image_ids), len(prompts))
    return scores


def pretraining_params(
    inputs: dict[str, str],
    settings: dict,
    *,
    text_backbone: str,
    height: int,
    width: int,
    legacy: bool,
    seed: int,
    out_dir: str,
    threads: int,
) -> dict:
    """The plain-data description of a pretraining run (what every torchrun rank reads)."""
    train_keys = {
        "epochs": "epochs",
        "lr": "lr",
        "weight_decay": "weight_decay",
        "grad_accum_steps": "grad_accum_steps",
        "max_grad_norm": "max_grad_norm",
        "precision": "precision",
        "batch_size": "batch_size",
        "num_workers": "num_workers",
        "i2i_weight": "i2i_weight",
        "t2t_weight": "t2t_weight",
        "mask_false_negatives": "mask_false_negatives",
    }
    train = {ours: settings[key] for key, ours in train_keys.items()}
    warmup = settings["warmup_epochs"]
    train["warmup"] = int(warmup) if float(warmup).is_integer() else float(warmup) / settings["epochs"]
    if not settings["no_weight_decay_for_norms_biases_and_scale"]:
        train["no_decay_for"] = ()
    if legacy:
        train["clamp_logit_scale"] = None  # upstream never clamps
    return {
        "report_table": inputs["reports"],
        "vindr_table": inputs.get("vindr"),
        "manifests": [inputs[k] for k in ("reports_manifest", "vindr_manifest") if k in inputs],
        "text_model": inputs.get("text_model", text_backbone),
        "image_encoder": settings["image_encoder"],
        "projection": settings["projection"],
        "projection_dim": settings["projection_dim"],
        "pooling": settings["pooling"],
        "text_max_length": settings["text_max_length"],
        "val_fold": settings["val_fold"],
        "height": height,
        "width": width,
        "legacy": legacy,
        "seed": seed,
        "threads": threads,
        "out_dir": out_dir,
        "train": train,
    }


def evaluate_zero_shot(
    dataset: str, scores_csv: str | Path, tables: dict[str, str], *, checkpoint: str, seed: int
) -> pd.DataFrame:
    """Zero-shot AUROC of a dataset's prompt scores under the paper and clean protocols, with provenance."""
    from mammoclip.annotations.tables import read_table
    from mammoclip.evaluate.zeroshot import evaluate_rsna, evaluate_vindr
    from mammoclip.provenance import code_version

    scores = pd.read_csv(scores_csv, dtype={"image_id": str})
    if dataset == "vindr":
        rows = read_table(tables["rows"], str_columns=("patient_id", "image_id"))
        images = read_table(tables["images"], str_columns=("patient_id", "image_id"))
        results = evaluate_vindr(scores, rows, images, seed=seed)
    elif dataset == "rsna":
        results = evaluate_rsna(
            scores, read_table(tables["folds"], str_columns=("patient_id", "image_id")), seed=seed
        )
    else:
        raise ValueError(f"no zero-shot labels for dataset {dataset!r}")
    for row in results.itertuples():
        log.info(
            "%s %s (%s, %s): AUROC %.3f [%.3f, %.3f], n=%d",
            row.dataset,
            row.label,
            row.protocol,
            row.level,
            row.value,
            row.value_low,
            row.value_high,
            row.n,
        )
    return results.assign(checkpoint=str(checkpoint), seed=seed, code_version=code_version())


def build_paper_tables(
    classification_csvs: Sequence[str | Path],
    zero_shot_csvs: Sequence[str | Path],
    *,
    paper_results: str | Path,
    protocol: str,
    out_stem: str | Path,
    plots: dict[tuple[str, str], str | Path],
    model_of: dict[str, str],
    paper_model: str,
) -> pd.DataFrame:
    """One protocol's classification table (``<out_stem>.md`` / ``.csv``) and data-efficiency plots.

    ``plots``: ``{(dataset, label): png path}``; ``model_of``: ``{checkpoint path: model name}`` for the
    zero-shot files. Returns the table.
    """
    from mammoclip.tables import (
        aggregate_runs,
        data_efficiency_plot,
        paper_table,
        read_paper_results,
        runs_from_results,
        write_table_files,
    )

    def read(path):
        return pd.read_csv(
            path, dtype={"model": str, "checkpoint": str, "paper_model": str}, keep_default_na=True
        )

    runs = runs_from_results(
        [read(p) for p in classification_csvs],
        [read(p) for p in zero_shot_csvs],
        model_of=model_of,
        paper_model=paper_model,
    )
    runs = runs[runs["protocol"] == protocol]
    log.info(
        "%s protocol: %d runs from %d classifier and %d zero-shot files",
        protocol,
        len(runs),
        len(classification_csvs),
        len(zero_shot_csvs),
    )
    aggregated = aggregate_runs(runs)
    paper = read_paper_results(paper_results)
    paper = paper[paper["task"] == "classification"]
    table = paper_table(aggregated, paper, protocol=protocol)
    write_table_files(table, out_stem, caption="Classification")
    for (dataset, label), path in plots.items():
        data_efficiency_plot(aggregated, path, dataset=dataset, label=label, paper=paper, protocol=protocol)
    return table
