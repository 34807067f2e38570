"""One function per Snakemake rule, with the rule's name, in the order of the DAG.

A stage takes the rule's input paths, output paths and parameters as keyword arguments, reads the inputs,
calls the package's single-purpose functions and writes every output of the rule (provenance included).
The workflow scripts only unpack the ``snakemake`` object and call one stage, so everything a rule does can
be run and tested without Snakemake. What differs per dataset comes from :mod:`mammoclip.registry`.

DAG: phantom -> convert_shard -> join_manifest -> vindr_tables / rsna_folds / prepare_reports ->
augment_reports -> tiny_text_model -> pretrain -> embed_images -> score_images -> zero_shot; classify ->
classification_table, roc_plot; detect -> detection_table; factor_embeddings -> factor_train ->
factor_localise -> localisation_table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mammoclip import registry
from mammoclip.datasets import DatasetSpec, list_images, read_metadata, select_shard
from mammoclip.preprocess import check_failures, combine_manifests, convert_images, read_manifest
from mammoclip.provenance import write_provenance
from mammoclip.runs import RunKey

log = logging.getLogger(__name__)

PathLike = str | Path

#: the id columns every annotation table is read with as strings
_ID_COLUMNS = ("patient_id", "image_id")


# --------------------------------------------------------------------------------------------------
# Phantom data (demo only)
# --------------------------------------------------------------------------------------------------


def phantom(
    *,
    dataset: str,
    out_dir: PathLike,
    size: int,
    image_scale: float,
    seed: int,
    transfer_syntaxes: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Rules ``phantom_{dataset}``: write the phantom of ``dataset`` (metadata CSVs, DICOMs, truth and lesion
    tables) into ``out_dir``, ``size`` studies/patients big; ``options``: the generator's further settings
    (its registry entry's ``phantom_options``). Returns the per-image truth table."""
    entry = registry.get_dataset(dataset)
    generate = registry.resolve(entry.phantom_generator)
    out_dir = Path(out_dir)
    truth = generate(
        out_dir,
        **{entry.phantom_size_key: size},
        **dict(options or {}),
        progress=True,
        image_scale=image_scale,
        seed=seed,
        transfer_syntaxes=tuple(transfer_syntaxes),
    )
    log.info("generated phantom %s: %d images in %s", dataset, len(truth), out_dir)
    return truth


# --------------------------------------------------------------------------------------------------
# DICOM -> PNG
# --------------------------------------------------------------------------------------------------


def convert_shard(
    *,
    spec: DatasetSpec | Mapping[str, str],
    shard: int,
    n_shards: int,
    png_root: PathLike,
    width: int,
    height: int,
    legacy: bool,
    processes: int,
    manifest: PathLike,
) -> pd.DataFrame:
    """Convert (or, for a PNG release, check) the images of one shard with ``processes`` workers and write
    the shard's ``manifest``. ``spec``: the dataset's :class:`DatasetSpec` (or its ``to_params()``)."""
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_params(spec)
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
    table = convert_images(part, width=width, height=height, legacy=legacy, processes=processes)
    failed = table[table["status"] != "ok"]
    for row in failed.itertuples():
        log.warning("failed: %s (%s)", row.source_path, row.reason)
    log.info("%s shard %d: %d ok, %d failed", spec.name, shard, len(table) - len(failed), len(failed))
    table.to_csv(manifest, index=False)
    return table


def join_manifest(
    *,
    shards: Sequence[PathLike],
    manifest: PathLike,
    provenance: PathLike,
    spec: Mapping[str, str],
    max_failed_fraction: float,
    seed: int,
    width: int,
    height: int,
    legacy: bool,
) -> pd.DataFrame:
    """Join the shard manifests into the dataset's ``manifest`` (+ ``provenance``); fail with the list of
    bad files when more than ``max_failed_fraction`` of the images failed."""
    table = combine_manifests(shards)
    check_failures(table, max_failed_fraction)
    n_failed = int((table["status"] != "ok").sum())
    log.info("manifest: %d images, %d failed (limit %.1f%%)", len(table), n_failed, 100 * max_failed_fraction)
    table.to_csv(manifest, index=False)
    write_provenance(
        provenance,
        stage="preprocess",
        dataset=spec["name"],
        source=spec["source"],
        data_root=spec["root"],
        metadata_csv=spec["metadata_csv"],
        width=width,
        height=height,
        legacy=legacy,
        seed=seed,
        images=len(table),
        failed=int((table["status"] != "ok").sum()),
    )
    return table


# --------------------------------------------------------------------------------------------------
# Annotations and reports (one rule per dataset)
# --------------------------------------------------------------------------------------------------


def build_vindr_tables(
    breast: PathLike,
    findings: PathLike,
    manifest: PathLike,
    *,
    n_folds: int,
    seed: int,
    legacy: bool = False,
    box_table: PathLike | None = None,
) -> dict[str, pd.DataFrame]:
    """VinDr's row-level (upstream granularity), image-level, box and image-label tables, in memory.

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

    breast_table, finding_table = read_vindr_annotations(breast, findings, clip_boxes=not legacy)
    png_manifest = read_manifest(manifest)
    if box_table:
        release = read_release_box_table(box_table)
        mapped = boxes_from_release_table(finding_table, release, png_manifest, legacy=legacy)
    else:
        mapped = map_boxes_to_png(finding_table, png_manifest, legacy=legacy)
    rows = vindr_row_table(breast_table, mapped, png_manifest, n_folds=n_folds, seed=seed)
    images, boxes = vindr_image_table(breast_table, mapped, png_manifest, n_folds=n_folds, seed=seed)
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
        "boxes_beyond_image": finding_table.attrs["clipped_boxes"],
        "boxes_clipped_to_image": finding_table.attrs["boxes_clipped"],
        "boxes_mapped": int(boxes["resized_xmin"].notna().sum()),
        "boxes_without_png_box": int(boxes["resized_xmin"].isna().sum()),
    }
    if box_table:
        summary["truncated_ymax_in_box_table"] = mapped.attrs.get("truncated_ymax", 0)
    tables = {"rows": rows, "images": images, "boxes": boxes, "image_labels": labels}
    for table in tables.values():
        table.attrs["box_summary"] = summary
    return tables


def vindr_tables(
    *,
    breast: PathLike,
    findings: PathLike,
    manifest: PathLike,
    box_table: PathLike | None = None,
    rows: PathLike,
    images: PathLike,
    boxes: PathLike,
    image_labels: PathLike,
    provenance: PathLike,
    folds: int,
    seed: int,
    legacy: bool,
) -> dict[str, pd.DataFrame]:
    """VinDr's annotation tables (:func:`build_vindr_tables`) written to ``rows``, ``images``, ``boxes`` and
    ``image_labels`` (the registry entry's ``annotation_tables``), plus ``provenance``."""
    from mammoclip.annotations.tables import write_table

    tables = build_vindr_tables(
        breast, findings, manifest, n_folds=folds, seed=seed, legacy=legacy, box_table=box_table
    )
    paths = {"rows": rows, "images": images, "boxes": boxes, "image_labels": image_labels}
    for name, table in tables.items():
        write_table(table, paths[name])
    write_provenance(
        provenance,
        stage="annotations",
        dataset="vindr",
        data=[str(path) for path in [*([box_table] if box_table else []), breast, findings, manifest]],
        validation_folds=folds,
        seed=seed,
        legacy=legacy,
        rows={name: len(table) for name, table in tables.items()},
        boxes=tables["boxes"].attrs["box_summary"],
    )
    return tables


def build_rsna_folds(
    train: PathLike,
    manifest: PathLike,
    *,
    n_folds: int,
    seed: int,
    fold_file: PathLike | None = None,
) -> pd.DataFrame:
    """RSNA's train.csv with patient-grouped, cancer-stratified folds (or a validated user fold file) and
    the PNG paths of the converted images, in memory."""
    from mammoclip.annotations.rsna import (
        join_rsna_manifest,
        make_rsna_folds,
        read_rsna_folds,
        read_rsna_train,
        validate_fold_file,
    )

    train_table = read_rsna_train(train)
    if fold_file:
        table = validate_fold_file(read_rsna_folds(fold_file), train_table)
        log.info("RSNA folds from %s (validated)", fold_file)
    else:
        table = make_rsna_folds(train_table, n_folds=n_folds, seed=seed)
    return join_rsna_manifest(table, read_manifest(manifest))


def rsna_folds(
    *,
    train: PathLike,
    manifest: PathLike,
    train_folds: PathLike,
    provenance: PathLike,
    folds: int,
    fold_file: PathLike | None,
    seed: int,
) -> pd.DataFrame:
    """RSNA's fold table (:func:`build_rsna_folds`) written to ``train_folds``, plus ``provenance``."""
    from mammoclip.annotations.tables import write_table

    table = build_rsna_folds(train, manifest, n_folds=folds, seed=seed, fold_file=fold_file)
    write_table(table, train_folds)
    write_provenance(
        provenance,
        stage="annotations",
        dataset="rsna",
        data=[train, manifest],
        fold_file=fold_file,
        folds=folds,
        seed=seed,
        images=len(table),
    )
    return table


def prepare_reports(
    *, reports: PathLike, manifest: PathLike, table: PathLike, legacy: bool, folds: int
) -> pd.DataFrame:
    """Clean the in-house ``reports`` and group them per breast with patient-level folds, keeping only
    converted images; writes ``table``."""
    from mammoclip.annotations.reports import (
        build_pretraining_table,
        png_paths_from_manifest,
        read_reports_csv,
        write_pretraining_table,
    )

    png_paths = png_paths_from_manifest(read_manifest(manifest), log)
    grouped = build_pretraining_table(
        read_reports_csv(reports), legacy=legacy, png_paths=png_paths, n_folds=folds, logger=log
    )
    write_pretraining_table(grouped, table)
    return grouped


def augment_reports(
    *,
    grouped: PathLike,
    table: PathLike,
    provenance: PathLike,
    augmentation: Mapping[str, Any],
    legacy: bool,
    folds: int,
    seed: int,
) -> pd.DataFrame:
    """Add ``text_augment`` to the ``grouped`` report table by back-translation (a copy of ``text`` when
    ``augmentation["method"]`` is ``none``); writes ``table`` and ``provenance``."""
    from mammoclip.annotations.augment import augment_table, make_back_translator
    from mammoclip.annotations.reports import read_pretraining_table, write_pretraining_table

    source = read_pretraining_table(grouped)
    if augmentation["method"] == "none":
        log.info("augmentation: none (text_augment = text)")
        augmented = augment_table(source, translate=list)
    else:
        translate = make_back_translator(
            augmentation["language"],
            model_dir=augmentation["model_dir"],
            temperature=augmentation["temperature"],
            num_beams=augmentation["num_beams"],
            batch_size=augmentation["batch_size"],
            seed=seed,
        )
        augmented = augment_table(source, translate=translate)
    write_pretraining_table(augmented, table)
    write_provenance(
        provenance,
        stage="reports",
        data=grouped,
        legacy=legacy,
        folds=folds,
        augmentation=augmentation,
        seed=seed,
        rows=len(augmented),
    )
    return augmented


# --------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------


def tiny_text_model(*, reports: PathLike, model: PathLike, settings: Mapping[str, Any], seed: int) -> Any:
    """The demo's tiny BERT + WordPiece tokenizer, trained on the report corpus and the prompts, in the
    folder ``model``."""
    from mammoclip.train.run import build_text_model

    return build_text_model(reports, model, settings=settings, seed=seed)


@dataclass(frozen=True)
class PretrainInputs:
    """The ``pretrain`` rule's inputs."""

    reports: str  # the image+report table (clip_pretrain.csv)
    reports_manifest: str
    vindr: str | None = None  # VinDr's image-label table, with pretrain.use_vindr
    vindr_manifest: str | None = None
    text_model: str | None = None  # the tiny text model's folder (else the text backbone)


def pretrain(
    *,
    inputs: PretrainInputs,
    checkpoint: PathLike,
    metrics: PathLike,
    settings: Mapping[str, Any],
    text_backbone: str,
    height: int,
    width: int,
    legacy: bool,
    seed: int,
    run_dir: str,
    threads: int,
    gpus: int,
) -> Path:
    """CLIP pretraining: the plain-data description of the run (what every torchrun rank reads) from the
    ``pretrain`` config section, then training here or under torchrun; writes the best ``checkpoint`` and
    the ``metrics``. ``run_dir`` keeps the state a rerun resumes from."""
    from mammoclip.train.pretrain import TrainConfig
    from mammoclip.train.run import launch_pretraining

    train = TrainConfig.from_config(settings, seed=seed, legacy=legacy).to_dict()
    manifests = [m for m in (inputs.reports_manifest, inputs.vindr_manifest) if m is not None]
    params = {
        "report_table": inputs.reports,
        "vindr_table": inputs.vindr,
        "manifests": manifests,
        "text_model": inputs.text_model or text_backbone,
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
        "out_dir": run_dir,
        "train": train,
    }
    return launch_pretraining(params, gpus=gpus, checkpoint=checkpoint, metrics=metrics)


# --------------------------------------------------------------------------------------------------
# Inference and zero-shot
# --------------------------------------------------------------------------------------------------


def embed_images(
    *,
    manifest: PathLike,
    checkpoint: PathLike,
    embeddings: PathLike,
    height: int,
    width: int,
    batch_size: int,
    text_backbone: str,
    threads: int = 1,
) -> None:
    """Raw and projected embeddings of every converted image of a dataset, written to ``embeddings`` with
    provenance metadata."""
    import torch

    from mammoclip.checkpoints import load_clip
    from mammoclip.inference import embed_batches, list_inputs, write_embeddings
    from mammoclip.provenance import provenance

    torch.set_num_threads(max(threads, 1))
    inputs = list_inputs(manifest)
    model, _, _ = load_clip(checkpoint, text_backbone=text_backbone)
    raw, projected = embed_batches(model, inputs, height=height, width=width, batch_size=batch_size)
    metadata = provenance(checkpoint=str(checkpoint), data=str(manifest), height=height, width=width)
    write_embeddings(embeddings, inputs["image_id"], raw, projected, metadata)
    log.info(
        "embedded %d images with %s: raw %s, projected %s",
        len(inputs),
        checkpoint,
        raw.shape,
        projected.shape,
    )


def score_images(
    *,
    embeddings: PathLike,
    checkpoint: PathLike,
    scores: PathLike,
    prompts: Mapping[str, Mapping[str, Sequence[str]]],
    text_backbone: str,
) -> pd.DataFrame:
    """Per-image class probabilities of every prompt task, from stored ``embeddings``; writes ``scores``."""
    from mammoclip.checkpoints import load_clip
    from mammoclip.inference import read_embeddings, score_embeddings
    from mammoclip.provenance import code_version

    image_ids, _, projected, _ = read_embeddings(embeddings)
    model, tokenizer, _ = load_clip(checkpoint, text_backbone=text_backbone)
    table = score_embeddings(model, tokenizer, image_ids, projected, prompts)
    table["checkpoint"] = str(checkpoint)
    table["code_version"] = code_version()
    log.info("scored %d images on %d task(s)", len(image_ids), len(prompts))
    table.to_csv(scores, index=False)
    return table


def zero_shot(
    *,
    dataset: str,
    scores: PathLike,
    tables: Mapping[str, PathLike],
    results: PathLike,
    checkpoint: str,
    seed: int,
) -> pd.DataFrame:
    """Zero-shot AUROC of a dataset's prompt ``scores`` under the paper and clean protocols, by the
    dataset's registry evaluator on its annotation ``tables``; writes ``results`` (with provenance
    columns)."""
    from mammoclip.annotations.tables import read_table
    from mammoclip.provenance import code_version

    entry = registry.get_dataset(dataset)
    if entry.zero_shot_evaluator is None:
        raise ValueError(f"no zero-shot labels for dataset {dataset!r}")
    evaluate = registry.resolve(entry.zero_shot_evaluator)
    score_table = pd.read_csv(scores, dtype={"image_id": str})
    loaded = {key: read_table(tables[key], str_columns=_ID_COLUMNS) for key in entry.zero_shot_tables}
    table = evaluate(score_table, **loaded, seed=seed)
    for row in table.itertuples():
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
    table = table.assign(checkpoint=str(checkpoint), seed=seed, code_version=code_version())
    table.to_csv(results, index=False)
    return table


# --------------------------------------------------------------------------------------------------
# Classifiers and the paper's tables
# --------------------------------------------------------------------------------------------------


def classify(
    *,
    key: RunKey,
    settings: Mapping[str, Any],
    checkpoint: str,
    tables: Mapping[str, str],
    outputs: Mapping[str, str],
    height: int,
    width: int,
    embeddings: str | None = None,
    augment: bool = False,
    precision: str = "fp32",
    num_workers: int = 0,
    n_boot: int = 1000,
    paper_model: str = "",
    text_backbone: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> pd.DataFrame:
    """One classifier run (:mod:`mammoclip.downstream`): ``settings`` are the label's training settings,
    ``tables`` the annotation table(s) it reads, ``embeddings`` the cached image features of a linear probe.

    Writes ``outputs``: ``metrics`` (CSV), ``predictions`` (CSV), ``history`` (CSV), ``model`` (the
    selected weights, ``torch.save``) and ``provenance`` (JSON). Returns the metrics; every row carries the
    run's key, checkpoint, protocol, seed and code version. ``threads``: torch's CPU threads (else as is).
    """
    import torch

    from mammoclip.annotations.tables import read_table, write_table
    from mammoclip.downstream import MODES, label_table, run_metrics, run_parts, train_run
    from mammoclip.inference import pick_device, read_embeddings
    from mammoclip.io import atomic_path
    from mammoclip.provenance import code_version
    from mammoclip.train.classify import ClassifierConfig

    if threads:
        torch.set_num_threads(threads)
    if key.mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {key.mode!r}")
    spec = registry.get_label(key.label)
    config = ClassifierConfig.from_config(
        settings,
        mode=key.mode,
        label=key.label,
        n_classes=spec.n_classes,
        seed=key.seed,
        precision=precision,
        num_workers=num_workers,
    )
    loaded = {k: read_table(v, str_columns=_ID_COLUMNS) for k, v in tables.items()}
    try:
        table = label_table(loaded, dataset=key.dataset, label=key.label, protocol=key.protocol)
    except ValueError as err:
        raise ValueError(f"{', '.join(map(str, tables.values()))}: {err}") from None
    parts = run_parts(
        table,
        dataset=key.dataset,
        protocol=key.protocol,
        fold=key.fold,
        fraction=key.fraction,
        seed=key.seed,
        binary=config.binary,
    )
    cached = None
    if embeddings:
        ids, raw, _, meta = read_embeddings(embeddings)
        cached = (ids, raw)
        log.info("linear probe on cached embeddings %s (%s)", embeddings, meta.get("checkpoint", "?"))
    torch_device = pick_device(device)
    load_kwargs = {"text_backbone": text_backbone} if text_backbone else {}
    probs, history, state, info = train_run(
        parts,
        config,
        checkpoint=checkpoint,
        height=height,
        width=width,
        embeddings=cached,
        augment=augment,
        device=str(torch_device),
        load_kwargs=load_kwargs,
    )
    metrics, predictions = run_metrics(
        parts["report"],
        probs,
        dataset=key.dataset,
        protocol=key.protocol,
        n_classes=spec.n_classes,
        train_labels=parts["train"]["label"],
        n_boot=n_boot,
        seed=key.seed,
    )
    selected = next(h["epoch"] for h in history if h["selected"])
    keys = key.record(paper_model=paper_model)
    metrics = pd.DataFrame([{**keys, **row} for row in metrics.to_dict("records")])
    metrics = metrics.assign(
        n_train=len(parts["train"]),
        n_select=len(parts["select"]),
        selected_epoch=selected,
        cached_embeddings=bool(embeddings),
        checkpoint=str(checkpoint),
        code_version=code_version(),
    )
    for row in metrics.itertuples():
        log.info(
            "%s %s %s %s frac %g fold %d: %s (%s) %.3f [%.3f, %.3f]",
            key.protocol,
            key.dataset,
            key.label,
            key.mode,
            key.fraction,
            key.fold,
            row.metric,
            row.level,
            row.value,
            row.value_low,
            row.value_high,
        )
    predictions.insert(0, "part", "report")
    write_table(metrics, outputs["metrics"])
    write_table(predictions, outputs["predictions"])
    write_table(pd.DataFrame(history), outputs["history"])
    record = write_provenance(
        outputs["provenance"],
        **keys,
        checkpoint=str(checkpoint),
        checkpoint_info={k: v for k, v in info.items() if isinstance(v, str | int | float | bool)},
        tables={k: str(v) for k, v in tables.items()},
        embeddings=embeddings,
        classifier=config.to_dict(),
        augment=augment,
        selected_epoch=selected,
        n_rows={k: len(v) for k, v in parts.items()},
        device=str(torch_device),
    )
    # torch.save names its zip archive after the file: the temporary file keeps the destination's stem
    model = Path(outputs["model"])
    with atomic_path(model, temporary=model.with_suffix(".tmp")) as tmp:
        torch.save({"state_dict": state, "metadata": record}, tmp)
    return metrics


def classification_table(
    *,
    classification: Sequence[PathLike],
    zero_shot: Sequence[PathLike],
    paper_results: PathLike,
    markdown: PathLike,
    csv: PathLike,
    plots: Sequence[PathLike],
    protocol: str,
    plot_datasets: Mapping[str, str],
    model_of: Mapping[str, str],
    paper_model: str,
) -> pd.DataFrame:
    """One protocol's classification table (``markdown`` and ``csv``: the same stem) and its data-efficiency
    ``plots`` (``efficiency_{label}.png``), from the runs' ``classification`` metrics and the ``zero_shot``
    results. ``plot_datasets``: ``{label: dataset}``; ``model_of``: ``{checkpoint path: model name}`` for the
    zero-shot files. Returns the table."""
    from mammoclip.paper_tables import (
        aggregate_runs,
        paper_table,
        read_paper_results,
        runs_from_results,
        write_table_files,
    )
    from mammoclip.plots import efficiency_plot

    out_stem = Path(markdown).with_suffix("")
    if Path(csv) != out_stem.with_name(out_stem.name + ".csv"):
        raise ValueError(f"{markdown} and {csv} must share their stem")

    def read(path):
        return pd.read_csv(
            path, dtype={"model": str, "checkpoint": str, "paper_model": str}, keep_default_na=True
        )

    runs = runs_from_results(
        [read(p) for p in classification],
        [read(p) for p in zero_shot],
        model_of=dict(model_of),
        paper_model=paper_model,
    )
    runs = runs[runs["protocol"] == protocol]
    log.info(
        "%s protocol: %d runs from %d classifier and %d zero-shot files",
        protocol,
        len(runs),
        len(classification),
        len(zero_shot),
    )
    aggregated = aggregate_runs(runs)
    paper = read_paper_results(paper_results)
    paper = paper[paper["task"] == "classification"]
    table = paper_table(aggregated, paper, protocol=protocol)
    write_table_files(table, out_stem, caption="Classification")
    for path in plots:
        label = Path(path).stem.removeprefix("efficiency_")
        efficiency_plot(
            aggregated, path, dataset=plot_datasets[label], label=label, paper=paper, protocol=protocol
        )
    return table


def roc_plot(
    *,
    predictions: Sequence[PathLike],
    runs: Sequence[Mapping[str, Any]],
    scores: Sequence[PathLike],
    models: Sequence[str],
    tables: Mapping[str, PathLike],
    plot: PathLike,
    label: str,
    protocol: str,
) -> pd.DataFrame:
    """ROC curves of one binary ``label`` under ``protocol`` (:mod:`mammoclip.evaluate.roc`): zero-shot
    from each model's prompt ``scores`` on the dataset's zero-shot ``tables`` (registry
    ``zero_shot_sets``), linear probe and finetune from the classifier ``predictions`` at 100 % data
    (``runs``: each file's ``classify`` wildcards, in the same order). Writes ``plot``; returns the curves.
    """
    from mammoclip.annotations.tables import read_table
    from mammoclip.evaluate.roc import classifier_scores, roc_curves, zero_shot_scores
    from mammoclip.evaluate.zeroshot import primary_set
    from mammoclip.plots import roc_plot as draw_roc

    if len(predictions) != len(runs) or len(scores) != len(models):
        raise ValueError("roc_plot: one run key per predictions file and one model per scores file")
    dataset = registry.get_label(label).dataset
    entry = registry.get_dataset(dataset)
    if entry.zero_shot_sets is None or registry.get_label(label).n_classes != 1:
        raise ValueError(f"roc_plot: {label} is not a binary label with zero-shot scores")
    loaded = {key: read_table(tables[key], str_columns=_ID_COLUMNS) for key in entry.zero_shot_tables}
    frames = []
    for model, path in zip(models, scores, strict=True):
        sets = registry.resolve(entry.zero_shot_sets)(pd.read_csv(path, dtype={"image_id": str}), **loaded)
        frames.append(zero_shot_scores(primary_set(sets, label=label, protocol=protocol), model=model))
    classified = [
        (key, read_table(path, str_columns=_ID_COLUMNS)) for key, path in zip(runs, predictions, strict=True)
    ]
    frames.append(classifier_scores(classified, dataset=dataset, protocol=protocol))
    curves = roc_curves(pd.concat(frames, ignore_index=True))
    for curve in curves.drop_duplicates(["setting", "model", "level", "runs"]).itertuples():
        log.info(
            "%s %s %s (%s): AUROC %.3f on %d %s (%d positive) %s",
            protocol,
            label,
            curve.setting,
            curve.model,
            curve.auroc,
            curve.n,
            curve.level,
            curve.n_pos,
            curve.runs,
        )
    draw_roc(curves, plot, title=f"{dataset} {label}: ROC ({protocol} protocol)")
    return curves


# --------------------------------------------------------------------------------------------------
# Detectors and the detection tables (docs/upstream.md#detection)
# --------------------------------------------------------------------------------------------------

#: box columns of the detection frames (PNG pixels) and the box table's columns they come from
_BOX = ("xmin", "ymin", "xmax", "ymax")
_PNG_BOX = ("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")


def detection_truths(
    images: PathLike, boxes: PathLike, *, label: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """``(image table, truths, counts)`` of a detection label from the annotation stage's tables.

    The image table gets a 0/1 column named ``label``: the image has at least one usable box of the
    label's finding category (registry). Truths: ``image_id, patient_id, xmin, ymin, xmax, ymax`` in PNG
    pixels. Boxes without a PNG box (NaN: the lesion fell outside the breast crop) are excluded, and so are
    boxes of images missing from the image table (failed conversions); ``counts`` says how many (logged).
    """
    from mammoclip.annotations.tables import read_table

    category = registry.get_label(label).detection_category
    if not category:
        raise ValueError(f"label {label!r} has no detection category (mammoclip/registry.py)")
    image_table = read_table(images, str_columns=_ID_COLUMNS)
    box_table = read_table(boxes, list_columns=("finding_categories",), str_columns=_ID_COLUMNS)
    in_category = [category in (c if isinstance(c, list) else []) for c in box_table["finding_categories"]]
    of_label = box_table[in_category]
    usable = of_label[list(_PNG_BOX)].notna().all(axis=1)
    known = of_label["image_id"].isin(set(image_table["image_id"]))
    kept = of_label[usable & known]
    truths = pd.DataFrame(
        {
            "image_id": kept["image_id"],
            "patient_id": kept["patient_id"],
            **{c: kept[png].astype(float) for c, png in zip(_BOX, _PNG_BOX, strict=True)},
        }
    ).reset_index(drop=True)
    has_box = image_table["image_id"].isin(set(truths["image_id"]))
    labelled = image_table[label].astype(bool) if label in image_table.columns else has_box
    counts = {
        "boxes": len(of_label),
        "boxes_used": len(truths),
        "boxes_outside_crop": int((~usable).sum()),
        "boxes_of_unknown_images": int((usable & ~known).sum()),
        "labelled_images_without_box": int((labelled & ~has_box).sum()),
    }
    image_table[label] = has_box.astype(int)
    log.info(
        "%s (%r boxes): %d boxes, %d used on %d images; excluded: %d outside the crop (no PNG box), %d of "
        "images not in the image table; %d images labelled %s without a usable box count as negatives",
        label,
        category,
        counts["boxes"],
        counts["boxes_used"],
        int(has_box.sum()),
        counts["boxes_outside_crop"],
        counts["boxes_of_unknown_images"],
        counts["labelled_images_without_box"],
        label,
    )
    return image_table, truths, counts


def detect(
    *,
    key: RunKey,
    settings: Mapping[str, Any],
    checkpoint: str,
    images: PathLike,
    boxes: PathLike,
    outputs: Mapping[str, str],
    n_boot: int = 1000,
    iou_threshold: float = 0.5,
    paper_model: str = "",
    num_workers: int = 0,
    precision: str = "fp32",
    text_backbone: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> pd.DataFrame:
    """One detector run: a RetinaNet on the ``checkpoint``'s image encoder for ``key.label``'s boxes.

    ``settings``: the label's ``detect.labels.<label>`` settings with ``key.mode``'s overrides applied;
    ``images`` / ``boxes``: the annotation stage's image and box tables (:func:`detection_truths`). The
    protocol's parts (:func:`mammoclip.evaluate.protocols.split_detection`), the training fraction
    (:func:`~mammoclip.evaluate.protocols.sample_fraction`), training with the best epoch chosen on
    ``select`` (:func:`mammoclip.train.detect.train_detector`) and the metrics on ``report``
    (:func:`mammoclip.evaluate.detection.detection_metrics`; FROC under ``clean``).

    Writes ``outputs``: ``metrics`` (one row per metric with the run's key, checkpoint and code version),
    ``detections`` (``image_id, patient_id, score, xmin, ymin, xmax, ymax`` in PNG pixels), ``history``,
    ``model`` (the selected weights, ``torch.save``) and ``provenance``. Returns the metrics.
    """
    import torch

    from mammoclip.annotations.tables import write_table
    from mammoclip.evaluate.detection import detection_metrics
    from mammoclip.evaluate.protocols import sample_fraction, split_detection
    from mammoclip.inference import pick_device
    from mammoclip.io import atomic_path
    from mammoclip.provenance import code_version
    from mammoclip.train.detect import MODES, DetectorConfig, train_detector

    if threads:
        torch.set_num_threads(threads)
    if key.mode not in MODES:
        raise ValueError(f"detector mode must be one of {MODES}, got {key.mode!r}")
    image_table, truths, counts = detection_truths(images, boxes, label=key.label)
    parts = split_detection(
        image_table,
        label=key.label,
        protocol=key.protocol,
        val_fold=key.fold,
        seed=key.seed,
        negative_fraction=settings.get("clean_negative_fraction", 1.0),
    )
    parts["train"] = sample_fraction(
        parts["train"], fraction=key.fraction, protocol=key.protocol, seed=key.seed, label_column=key.label
    )
    config = DetectorConfig.from_config(
        settings,
        mode=key.mode,
        label=key.label,
        protocol=key.protocol,
        seed=key.seed,
        num_workers=num_workers,
        precision=precision,
    )
    if config.score_threshold is None:  # from_config resolves null with the protocol
        raise ValueError(f"no score threshold for protocol {key.protocol!r}")
    threshold = float(config.score_threshold)
    for name, part in parts.items():
        log.info(
            "%s: %d images (%d with a %s box) of %d patients",
            name,
            len(part),
            int(part[key.label].sum()),
            key.label,
            part["patient_id"].nunique(),
        )
    torch_device = pick_device(device)
    columns = ["image_id", "patient_id", "png_path"]
    in_parts = {name: part[columns].reset_index(drop=True) for name, part in parts.items()}
    wanted = set().union(*(set(p["image_id"]) for p in in_parts.values()))
    result = train_detector(
        in_parts,
        truths[truths["image_id"].isin(wanted)].reset_index(drop=True),
        config,
        checkpoint=checkpoint,
        device=str(torch_device),
        iou_threshold=iou_threshold,
        load_kwargs={"text_backbone": text_backbone} if text_backbone else None,
    )
    report = in_parts["report"]
    report_truths = truths[truths["image_id"].isin(set(report["image_id"]))].reset_index(drop=True)
    patient_of = dict(zip(report["image_id"], report["patient_id"], strict=True))
    detections = result.detections.reset_index(drop=True)
    detections = pd.DataFrame(
        {
            "image_id": detections["image_id"].astype(str),
            "patient_id": detections["image_id"].astype(str).map(patient_of),
            "score": detections["score"].astype(float),
            **{c: detections[c].astype(float) for c in _BOX},
        }
    )
    if detections["patient_id"].isna().any():
        raise ValueError("the detector returned detections of images outside the report part")
    detections = detections.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    metrics = detection_metrics(
        detections,
        report_truths,
        report[["image_id", "patient_id"]],
        froc=key.protocol == "clean",
        n_boot=n_boot,
        seed=key.seed,
        iou_threshold=iou_threshold,
    )
    info = dict(result.info)
    log.info("trained in %.1f s", info.pop("train_seconds", float("nan")))  # kept out of the files
    keys = key.record(paper_model=paper_model)
    metrics = pd.DataFrame([{**keys, **row} for row in metrics.to_dict("records")])
    metrics = metrics.assign(
        n_train=len(parts["train"]),
        n_train_boxes=int(truths["image_id"].isin(set(parts["train"]["image_id"])).sum()),
        n_select=len(parts["select"]),
        selected_epoch=info.get("best_epoch"),
        score_threshold=threshold,
        iou_threshold=iou_threshold,
        checkpoint=str(checkpoint),
        code_version=code_version(),
    )
    for row in metrics.itertuples():
        log.info(
            "%s %s %s %s frac %g fold %d: %s %.3f [%.3f, %.3f] (%d images, %d boxes)",
            key.protocol,
            key.dataset,
            key.label,
            key.mode,
            key.fraction,
            key.fold,
            row.metric,
            row.value,
            row.value_low,
            row.value_high,
            row.n_images,
            row.n_boxes,
        )
    write_table(metrics, outputs["metrics"])
    write_table(detections.reset_index(drop=True), outputs["detections"])
    write_table(pd.DataFrame(result.history), outputs["history"])
    plain = (str, int, float, bool, type(None))
    record = write_provenance(
        outputs["provenance"],
        **keys,
        checkpoint=str(checkpoint),
        tables={"images": str(images), "boxes": str(boxes)},
        detector=config.to_dict(),
        score_threshold=threshold,
        iou_threshold=iou_threshold,
        n_boot=n_boot,
        boxes=counts,
        n_images={name: len(part) for name, part in parts.items()},
        n_positive_images={name: int(part[key.label].sum()) for name, part in parts.items()},
        info={k: v for k, v in info.items() if isinstance(v, plain)},
        device=str(torch_device),
    )
    # torch.save names its zip archive after the file: the temporary file keeps the destination's stem
    model = Path(outputs["model"])
    with atomic_path(model, temporary=model.with_suffix(".tmp")) as tmp:
        torch.save({"state_dict": result.state_dict, "metadata": record}, tmp)
    return metrics


def _panel_items(
    detections: pd.DataFrame, truths: pd.DataFrame, report: pd.DataFrame, *, label: str, top: int = 3
) -> list[dict[str, Any]]:
    """Up to 6 report images with boxes of the label and 2 without (by image id), each with its truths and
    its ``top`` highest-scoring detections, for :func:`mammoclip.plots.detection_panel`."""
    import numpy as np

    positives = sorted(set(report.loc[report[label] == 1, "image_id"]))[:6]
    negatives = sorted(set(report.loc[report[label] == 0, "image_id"]))[: 8 - len(positives)]
    path_of = dict(zip(report["image_id"], report["png_path"], strict=True))
    items = []
    for image_id in [*positives, *negatives]:
        found = detections[detections["image_id"] == image_id].nlargest(top, "score", keep="first")
        items.append(
            {
                "png_path": path_of[image_id],
                "title": str(image_id),
                "truths": truths.loc[truths["image_id"] == image_id, list(_BOX)].to_numpy(np.float64),
                "detections": found[list(_BOX)].to_numpy(np.float64),
                "scores": found["score"].to_numpy(np.float64),
            }
        )
    return items


def detection_table(
    *,
    metrics: Sequence[PathLike],
    detections: Sequence[PathLike],
    images: PathLike,
    boxes: PathLike,
    paper_results: PathLike,
    protocol: str,
    markdown: PathLike,
    csv: PathLike,
    froc_plots: Sequence[PathLike],
    panels: Sequence[PathLike],
    paper_model: str,
    iou_threshold: float = 0.5,
) -> pd.DataFrame:
    """One protocol's detection table (``markdown`` and ``csv``: the same stem) from the runs' ``metrics``,
    and per label a FROC plot (``froc_{label}.png``: every run's curve on its report images, runs of one
    setting and fraction averaged) and a panel of test images with truths and detections
    (``detections_{label}.png``: one run, the largest fraction, finetuned when available). ``detections``
    are the same runs' ``detections.csv``, in the order of ``metrics``. Returns the table."""
    from mammoclip.evaluate.detection import froc_curve
    from mammoclip.evaluate.protocols import split_detection
    from mammoclip.paper_tables import detection_table as build_table
    from mammoclip.paper_tables import read_paper_results, write_table_files
    from mammoclip.plots import detection_panel, froc_plot

    out_stem = Path(markdown).with_suffix("")
    if Path(csv) != out_stem.with_name(out_stem.name + ".csv"):
        raise ValueError(f"{markdown} and {csv} must share their stem")
    if len(metrics) != len(detections) or any(
        Path(m).parent != Path(d).parent for m, d in zip(metrics, detections, strict=False)
    ):
        raise ValueError("metrics and detections must be the files of the same runs, in the same order")
    frames = [
        pd.read_csv(p, dtype={"model": str, "checkpoint": str, "paper_model": str, "protocol": str})
        for p in metrics
    ]
    paper = read_paper_results(paper_results)
    table = build_table(frames, paper, protocol=protocol)
    write_table_files(table, out_stem, caption="Detection")
    log.info("%s protocol: detection table from %d runs", protocol, len(metrics))

    runs = [
        (frame.iloc[0].to_dict(), path)
        for frame, path in zip(frames, detections, strict=True)
        if len(frame) and frame["protocol"].iloc[0] == protocol
    ]
    targets = {Path(p).stem.removeprefix("froc_"): p for p in froc_plots}
    panel_targets = {Path(p).stem.removeprefix("detections_"): p for p in panels}
    for label in dict.fromkeys([*targets, *panel_targets]):
        image_table, truths, _ = detection_truths(images, boxes, label=label)
        report = split_detection(image_table, label=label, protocol=protocol)["report"]
        report_truths = truths[truths["image_id"].isin(set(report["image_id"]))]
        curves, chosen = [], None
        for run, path in runs:
            if run["label"] != label:
                continue
            if int(run["n_images"]) != len(report):
                raise ValueError(
                    f"{path}: the run evaluated {run['n_images']} images, the {protocol} protocol's test "
                    f"part now has {len(report)} (rerun the detectors)"
                )
            found = pd.read_csv(
                path, dtype={"image_id": str, "patient_id": str, **dict.fromkeys(("score", *_BOX), float)}
            )
            curve = froc_curve(found, report_truths, len(report), iou_threshold=iou_threshold)
            keys = {k: run[k] for k in ("label", "setting", "data_frac", "model", "protocol", "fold", "seed")}
            curves.append(curve.assign(**keys))
            rank = (run["setting"] == "ft", float(run["data_frac"]), -int(run["fold"]), -int(run["seed"]))
            if chosen is None or rank > chosen[0]:
                chosen = (rank, run, found)
        where = (
            f"{len(report)} positive test images" if protocol == "paper" else f"all {len(report)} test images"
        )
        if label in targets:
            empty = pd.DataFrame(columns=["label", "setting", "data_frac", "fp_per_image", "sensitivity"])
            froc_plot(
                pd.concat(curves, ignore_index=True) if curves else empty,
                targets[label],
                title=f"{label}: FROC, {protocol} protocol ({where})",
            )
        if label in panel_targets:
            items, title = [], f"{label}: no run"
            if chosen is not None:
                _, run, found = chosen
                items = _panel_items(found, report_truths, report, label=label)
                title = (
                    f"{label}, {run['setting']} {float(run['data_frac']) * 100:g} %, fold {int(run['fold'])} "
                    f"seed {int(run['seed'])} ({protocol} protocol): truths green, top detections orange"
                )
            detection_panel(items, panel_targets[label], title=title)
    return table


# --------------------------------------------------------------------------------------------------
# Mammo-FActOR: attribute embeddings, mapper, heatmaps, localisation (docs/upstream.md#mammo-factor)
# --------------------------------------------------------------------------------------------------


def factor_embeddings(
    *,
    checkpoint: PathLike,
    attributes: Mapping[str, Sequence[str]],
    embeddings: PathLike,
    provenance: PathLike,
    text_backbone: str | None = None,
) -> dict[str, list[str]]:
    """Attribute embeddings of a CLIP checkpoint (:func:`mammoclip.train.factor.attribute_embeddings`):
    ``embeddings`` (``.npz``: ``attributes`` names, ``embeddings [A, P]`` float32) and ``provenance`` (the
    sentences). Returns ``{attribute: sentences}``."""
    import numpy as np

    from mammoclip.checkpoints import load_clip
    from mammoclip.io import atomic_path
    from mammoclip.provenance import code_version
    from mammoclip.train.factor import attribute_embeddings, attribute_sentences

    model, tokenizer, info = load_clip(checkpoint, text_backbone=text_backbone)
    sentences = attribute_sentences(attributes)
    rows = attribute_embeddings(model, tokenizer, sentences).numpy().astype(np.float32)
    for name, row in zip(sentences, rows, strict=True):
        log.info("%s: %d sentences, embedding of %d values", name, len(sentences[name]), len(row))
    with atomic_path(embeddings, temporary=Path(str(embeddings) + ".tmp.npz")) as tmp:
        np.savez(tmp, attributes=np.asarray(list(sentences)), embeddings=rows)
    write_provenance(
        provenance,
        checkpoint=str(checkpoint),
        checkpoint_format=info["format"],
        tokenizer=str(info.get("tokenizer")),
        sentences=sentences,
        code_version=code_version(),
    )
    return sentences


def _read_attribute_embeddings(path: PathLike) -> tuple[list[str], Any]:
    import numpy as np
    import torch

    with np.load(path, allow_pickle=False) as data:
        return [str(a) for a in data["attributes"]], torch.from_numpy(data["embeddings"].astype(np.float32))


def _factor_labels(attributes: Sequence[str]) -> list[str]:
    """The annotation-table label of each attribute (:data:`~mammoclip.train.factor.ATTRIBUTE_FINDINGS`);
    an attribute without one cannot be trained on VinDr's labels."""
    from mammoclip.train.factor import ATTRIBUTE_FINDINGS

    unknown = [a for a in attributes if a not in ATTRIBUTE_FINDINGS]
    if unknown:
        raise ValueError(
            f"factor.attributes {unknown}: the mapper trains on VinDr's finding labels, known for "
            f"{sorted(ATTRIBUTE_FINDINGS)}"
        )
    return [ATTRIBUTE_FINDINGS[a][1] for a in attributes]


def factor_parts(images: pd.DataFrame, labels: Sequence[str], *, protocol: str, fold: int) -> dict:
    """``{"train", "select", "report"}`` of the mapper on VinDr's image table (:func:`split_vindr`): the
    ``paper`` protocol keeps the images with any of the ``labels`` only (upstream) and selects on the test
    split; ``clean`` keeps every image and selects on validation fold ``fold``."""
    from mammoclip.evaluate.protocols import split_vindr

    if protocol == "paper":
        images = images[images[list(labels)].eq(1).any(axis=1)]
        return split_vindr(images, protocol="paper")
    return split_vindr(images, protocol="clean", val_fold=fold)


def factor_train(
    *,
    protocol: str,
    model: str,
    seed: int,
    settings: Mapping[str, Any],
    legacy: bool,
    checkpoint: PathLike,
    embeddings: PathLike,
    images: PathLike,
    outputs: Mapping[str, str],
    text_backbone: str | None = None,
    num_workers: int = 0,
    device: str = "auto",
    threads: int | None = None,
) -> Any:
    """One attribute mapper (:func:`mammoclip.train.factor.train_mapper`) on the checkpoint's frozen image
    encoder, trained on VinDr's image-level finding labels (:func:`factor_parts`). Writes ``outputs``:
    ``mapper`` (``torch.save``: ``state_dict`` and ``metadata``), ``history`` and ``provenance``. While it
    runs, ``mapper.last.pt`` beside them holds the state after the last finished epoch, so that the job
    run again after a kill resumes there; it is deleted when the mapper is written."""
    import torch

    from mammoclip.annotations.tables import read_table, write_table
    from mammoclip.checkpoints import load_clip
    from mammoclip.inference import pick_device
    from mammoclip.io import atomic_path
    from mammoclip.provenance import code_version
    from mammoclip.train.factor import MapperConfig, train_mapper

    if threads:
        torch.set_num_threads(threads)
    attributes, vectors = _read_attribute_embeddings(embeddings)
    labels = _factor_labels(attributes)
    table = read_table(images, str_columns=_ID_COLUMNS)
    parts = factor_parts(table, labels, protocol=protocol, fold=int(settings["fold"]))
    for name, part in parts.items():
        counts = ", ".join(f"{int(part[label].sum())} {label}" for label in labels)
        log.info("%s: %d images of %d patients (%s)", name, len(part), part["patient_id"].nunique(), counts)
    config = MapperConfig.from_config(settings, seed=seed, legacy=legacy)
    clip, _, info = load_clip(checkpoint, tokenizer=False, text_backbone=text_backbone)
    torch_device = pick_device(device)
    # kept only while the job runs: a killed job's rerun continues after its last finished epoch
    resume = Path(outputs["mapper"]).with_name("mapper.last.pt")
    result = train_mapper(
        parts,
        vectors,
        labels,
        config,
        clip.image_encoder,
        device=str(torch_device),
        resume_path=resume,
        num_workers=num_workers,
    )
    log.info(
        "selected epoch %d (select loss %.4f)", result.info["best_epoch"], result.info["best_select_loss"]
    )
    info_plain = {k: v for k, v in result.info.items() if k != "train_seconds"}
    record = write_provenance(
        outputs["provenance"],
        protocol=protocol,
        model=model,
        seed=seed,
        checkpoint=str(checkpoint),
        checkpoint_format=info["format"],
        tables={"images": str(images), "embeddings": str(embeddings)},
        attributes=attributes,
        labels=labels,
        mapper=config.to_dict(),
        n_images={name: len(part) for name, part in parts.items()},
        info=info_plain,
        device=str(torch_device),
        code_version=code_version(),
    )
    write_table(result.history, outputs["history"])
    path = Path(outputs["mapper"])
    with atomic_path(path, temporary=path.with_suffix(".tmp")) as tmp:
        torch.save({"state_dict": result.state_dict, "metadata": record}, tmp)
    resume.unlink(missing_ok=True)
    return result


def factor_localise(
    *,
    protocol: str,
    model: str,
    seed: int,
    settings: Mapping[str, Any],
    paper_model: str,
    checkpoint: PathLike,
    embeddings: PathLike,
    mapper: PathLike,
    images: PathLike,
    boxes: PathLike,
    outputs: Mapping[str, str],
    text_backbone: str | None = None,
    num_workers: int = 0,
    device: str = "auto",
    threads: int | None = None,
) -> pd.DataFrame:
    """Heatmaps of the protocol's test images and their localisation scores.

    ``outputs``: ``heatmaps`` (``.npz``: ``image_id``, ``attributes``, ``heatmaps [N, A, h, w]`` float16 at
    feature resolution, ``scores [N, A]``, ``stride``, ``input_size``; :func:`mammoclip.evaluate.
    localisation.heatmap_to_png` maps one to PNG pixels), ``per_image`` (one row per (attribute, test
    image with a box of its finding): ``max_iou``, ``pointing_hit``, ``random_hit``, the heatmap maximum in
    PNG pixels), ``metrics`` (:func:`~mammoclip.evaluate.localisation.localisation_metrics` per attribute,
    with the run's keys) and ``provenance``. Returns the metrics."""
    import cv2
    import numpy as np
    import torch

    from mammoclip.annotations.tables import read_table, write_table
    from mammoclip.checkpoints import load_clip
    from mammoclip.evaluate.localisation import heatmap_to_png, image_localisation, localisation_metrics
    from mammoclip.inference import pick_device
    from mammoclip.io import atomic_path
    from mammoclip.models.factor import AttributeMapper
    from mammoclip.provenance import code_version
    from mammoclip.train.factor import MapperConfig, encode_maps, mapper_heatmaps

    if threads:
        torch.set_num_threads(threads)
    attributes, vectors = _read_attribute_embeddings(embeddings)
    labels = _factor_labels(attributes)
    saved = torch.load(mapper, map_location="cpu", weights_only=True)
    meta = saved["metadata"]
    if list(meta["attributes"]) != attributes:
        raise ValueError(
            f"{mapper}: trained for attributes {meta['attributes']}, {embeddings} has {attributes}"
        )
    config = MapperConfig(**meta["mapper"])
    table = read_table(images, str_columns=_ID_COLUMNS)
    report = factor_parts(table, labels, protocol=protocol, fold=int(settings["fold"]))["report"]
    report = report.reset_index(drop=True)
    h, w = meta["info"]["map_shape"]
    net = AttributeMapper(h * w, vectors.shape[1], len(attributes), interleave_heads=config.legacy)
    net.load_state_dict(saved["state_dict"])
    clip, _, _ = load_clip(checkpoint, tokenizer=False, text_backbone=text_backbone)
    torch_device = pick_device(device)
    maps = encode_maps(clip.image_encoder, report, config, device=str(torch_device), num_workers=num_workers)
    heat, scores = mapper_heatmaps(net, maps, vectors, top_k=config.top_k, temperature=config.temperature)
    path = Path(outputs["heatmaps"])
    with atomic_path(path, temporary=Path(str(path) + ".tmp.npz")) as tmp:
        np.savez_compressed(
            tmp,
            image_id=np.asarray([str(i) for i in report["image_id"]], dtype=str),
            attributes=np.asarray(attributes),
            heatmaps=heat,
            scores=scores,
            stride=np.int64(config.feature_stride),
            input_size=np.asarray([config.input_height, config.input_width], dtype=np.int64),
        )

    percentile = float(settings["percentile"])
    rows, frames = [], []
    for a, (attribute, label) in enumerate(zip(attributes, labels, strict=True)):
        _, truths, _ = detection_truths(images, boxes, label=label)
        by_image = {k: g[list(_BOX)].to_numpy(np.float64) for k, g in truths.groupby("image_id", sort=False)}
        per_attribute = []
        for i, row in enumerate(report.itertuples(index=False)):
            if row.image_id not in by_image:
                continue
            png = cv2.imread(str(row.png_path), cv2.IMREAD_GRAYSCALE)
            if png is None:
                raise ValueError(f"{row.png_path}: not a readable PNG (image {row.image_id})")
            input_size = (config.input_height, config.input_width)
            hm = heatmap_to_png(
                heat[i, a], stride=config.feature_stride, input_size=input_size, png_size=png.shape
            )
            y, x = np.unravel_index(int(np.argmax(hm)), hm.shape)
            found = image_localisation(hm, by_image[row.image_id], percentile=percentile)
            per_attribute.append(
                {
                    "attribute": attribute,
                    "label": label,
                    "image_id": row.image_id,
                    "patient_id": row.patient_id,
                    **found,
                    "peak_x": float(x) + 0.5,
                    "peak_y": float(y) + 0.5,
                    "score": float(scores[i, a]),
                }
            )
        if not per_attribute:
            log.warning("%s: no test image with a %s box; no localisation scores", attribute, label)
            continue
        frame = pd.DataFrame(per_attribute)
        rows.append(frame)
        metrics = localisation_metrics(
            frame, iou_thresholds=settings["iou_thresholds"], n_boot=int(settings["n_boot"]), seed=seed
        )
        for m in metrics.itertuples(index=False):
            log.info(
                "%s %s: %s %.3f [%.3f, %.3f] (%d images)",
                protocol, attribute, m.metric, m.value, m.value_low, m.value_high, m.n_images,
            )  # fmt: skip
        frames.append(metrics.assign(label=label))
    per_image = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["attribute", "label"])
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["label", "metric"])
    keys = {
        "dataset": "vindr",
        "setting": "weak",
        "data_frac": 1.0,
        "model": model,
        "paper_model": paper_model,
        "protocol": protocol,
        "fold": int(settings["fold"]) if protocol == "clean" else 0,
        "seed": int(seed),
    }
    metrics = pd.DataFrame(
        [{**keys, "label": r.pop("label"), **r} for r in metrics.to_dict("records")],
        columns=[*keys, "label", "metric", "value", "value_low", "value_high", "n_images", "n_patients"],
    ).assign(
        percentile=percentile, mapper=str(mapper), checkpoint=str(checkpoint), code_version=code_version()
    )
    write_table(per_image, outputs["per_image"])
    write_table(metrics, outputs["metrics"])
    write_provenance(
        outputs["provenance"],
        **keys,
        checkpoint=str(checkpoint),
        mapper=str(mapper),
        tables={"images": str(images), "boxes": str(boxes), "embeddings": str(embeddings)},
        attributes=attributes,
        percentile=percentile,
        iou_thresholds=list(settings["iou_thresholds"]),
        n_boot=int(settings["n_boot"]),
        n_report_images=len(report),
        device=str(torch_device),
    )
    return metrics


def _heatmap_items(
    heatmaps: PathLike, per_image: pd.DataFrame, images: pd.DataFrame, truths: pd.DataFrame, *,
    attribute: str, percentile: float, n: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Up to ``n`` test images with a box of the attribute (by image id), each with its heatmap in PNG
    pixels, truth boxes, region boxes and the heatmap maximum, for :func:`mammoclip.plots.detection_panel`."""
    import cv2
    import numpy as np

    from mammoclip.evaluate.localisation import heatmap_regions, heatmap_to_png

    with np.load(heatmaps, allow_pickle=False) as data:
        ids = [str(i) for i in data["image_id"]]
        a = [str(x) for x in data["attributes"]].index(attribute)
        heat, stride = data["heatmaps"][:, a], int(data["stride"])
        in_h, in_w = (int(v) for v in data["input_size"])
    rows = per_image[per_image["attribute"] == attribute].sort_values("image_id").head(n)
    path_of = dict(zip(images["image_id"], images["png_path"], strict=True))
    items = []
    for row in rows.itertuples(index=False):
        png = cv2.imread(str(path_of[row.image_id]), cv2.IMREAD_GRAYSCALE)
        if png is None:
            raise ValueError(f"{path_of[row.image_id]}: not a readable PNG (image {row.image_id})")
        hm = heatmap_to_png(
            heat[ids.index(row.image_id)], stride=stride, input_size=(in_h, in_w), png_size=png.shape
        )
        hit = "hit" if row.pointing_hit else "miss"
        items.append(
            {
                "png_path": path_of[row.image_id],
                "title": str(row.image_id)[:12],
                "truths": truths.loc[truths["image_id"] == row.image_id, list(_BOX)].to_numpy(np.float64),
                "detections": heatmap_regions(hm, percentile=percentile),
                "heatmap": hm,
                "point": (row.peak_x, row.peak_y),
                "caption": f"best IoU {row.max_iou:.2f}, pointing {hit}",
            }
        )
    return items


def localisation_table(
    *,
    metrics: Sequence[PathLike],
    per_image: Sequence[PathLike],
    heatmaps: Sequence[PathLike],
    images: PathLike,
    boxes: PathLike,
    paper_results: PathLike,
    protocol: str,
    markdown: PathLike,
    csv: PathLike,
    overlays: Sequence[PathLike],
    percentile: float = 95.0,
    n_overlays: int = 6,
) -> pd.DataFrame:
    """One protocol's localisation table (``markdown`` and ``csv``, one stem) from the runs' ``metrics``,
    and per attribute an overlay panel (``heatmaps_{attribute}.png``: test images with a box of the finding,
    heatmap over the image, truths green, regions orange, the maximum as a white cross) of the first run.
    ``per_image`` and ``heatmaps`` are the same runs' files, in the order of ``metrics``."""
    from mammoclip.annotations.tables import read_table
    from mammoclip.paper_tables import localisation_table as build_table
    from mammoclip.paper_tables import read_paper_results, write_table_files
    from mammoclip.plots import detection_panel
    from mammoclip.train.factor import ATTRIBUTE_FINDINGS

    out_stem = Path(markdown).with_suffix("")
    if Path(csv) != out_stem.with_name(out_stem.name + ".csv"):
        raise ValueError(f"{markdown} and {csv} must share their stem")
    if not len(metrics) == len(per_image) == len(heatmaps):
        raise ValueError("metrics, per_image and heatmaps must be the files of the same runs")
    frames = [pd.read_csv(p, dtype={"model": str, "checkpoint": str, "paper_model": str}) for p in metrics]
    table = build_table(frames, read_paper_results(paper_results), protocol=protocol)
    write_table_files(table, out_stem, caption="Mammo-FActOR weakly supervised localisation")
    log.info("%s protocol: localisation table from %d runs", protocol, len(metrics))
    for path in overlays:
        attribute = Path(path).stem.removeprefix("heatmaps_")
        items, title = [], f"{attribute}: no run"
        if metrics:
            label = ATTRIBUTE_FINDINGS[attribute][1]
            table_images = read_table(images, str_columns=_ID_COLUMNS)
            _, truths, _ = detection_truths(images, boxes, label=label)
            rows = read_table(per_image[0], str_columns=_ID_COLUMNS)
            items = _heatmap_items(
                heatmaps[0],
                rows,
                table_images,
                truths,
                attribute=attribute,
                percentile=percentile,
                n=n_overlays,
            )
            run = frames[0].iloc[0]
            title = (
                f"{attribute} heatmaps, {run['model']} seed {int(run['seed'])} ({protocol} protocol): truths "
                f"green, regions above the {percentile:g}th percentile orange, maximum white"
            )
        detection_panel(items, path, title=title, max_images=max(1, n_overlays))
    return table
