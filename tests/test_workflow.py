"""End-to-end: Snakemake runs the phantom and preprocessing stages on a tiny config in a fresh folder."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

TINY = {
    "seed": 7,
    "phantoms": {
        "image_scale": 0.08,
        "vindr": {"n_studies": 10},
        "rsna": {"n_patients": 9},
        "inhouse": {"n_patients": 4},
    },
    "preprocess": {"width": 80, "height": 128, "shards": 2, "max_failed_fraction": 0.0},
    "reports": {"augmentation": {"method": "none"}},
    "annotations": {"vindr_validation_folds": 2, "rsna_folds": 3},
    "classify": {
        "linear_probe_on_embeddings": True,
        "precision": "fp32",
        "num_workers": 0,
        "gpus": 0,
        "n_boot": 20,
        "labels": {
            "Mass": {"epochs": 3, "lr": 1.0e-3, "fractions": {"lp": [0.5, 1.0], "ft": [1.0]}},
            "Suspicious_Calcification": {"enabled": False},
            "density": {"epochs": 3, "fractions": {"lp": [1.0], "ft": []}},
            "cancer": {"epochs": 3, "fractions": {"lp": [1.0], "ft": []}},
        },
    },
    # Mass detectors at the PNG size, both modes and protocols (the tiny phantom's test split has no
    # calcification, so the paper protocol would have no test image for it)
    "detect": {
        "precision": "fp32",
        "num_workers": 0,
        "gpus": 0,
        "n_boot": 20,
        "labels": {
            "Mass": {
                "epochs": 2,
                "lr": 1.0e-3,
                "input_height": 128,
                "input_width": 80,
                "anchor_sizes": [8, 16, 32, 64, 128],
                "fpn_channels": 32,
                "head_norm": "group_norm",
                "fractions": {"freeze": [1.0], "ft": [1.0]},
            },
            "Suspicious_Calcification": {"enabled": False},
        },
    },
    # Mammo-FActOR at the PNG size (the tiny encoder's final map: 4 x 3), features cached
    "factor": {
        "epochs": 2,
        "lr": 1.0e-3,
        "input_height": 128,
        "input_width": 80,
        "cache_features": True,
        "gpus": 0,
        "num_workers": 0,
        "n_boot": 20,
        "overlays": 2,
    },
}
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def make_workdir(path: Path, config: dict) -> Path:
    (path / "config").mkdir(parents=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_clip_checkpoint) -> Path:
    workdir = make_workdir(
        tmp_path_factory.mktemp("wf"), {**TINY, "pretrained_checkpoint": str(tiny_clip_checkpoint)}
    )
    snakemake(workdir)
    return workdir


def test_every_image_converted_with_a_manifest_row(demo):
    for dataset in ("vindr", "rsna", "inhouse"):
        truth = pd.read_csv(demo / "resources/phantoms" / dataset / "phantom_truth.csv", dtype=str)
        manifest = pd.read_csv(demo / "results/preprocess" / dataset / "manifest.csv", dtype=str)
        assert sorted(manifest["image_id"]) == sorted(truth["image_id"])
        assert (manifest["status"] == "ok").all(), manifest[manifest["status"] != "ok"]
        for row in manifest.itertuples():
            png = cv2.imread(str(demo / row.png_path), cv2.IMREAD_UNCHANGED)
            assert png is not None and png.shape == (128, 80) and png.dtype == "uint8"
            assert png.max() > 100  # breast tissue survived the crop
            assert row.png_path == f"results/png/{dataset}/{row.patient_id}/{row.image_id}.png"
            x0, y0, x1, y1 = (float(v) for v in (row.crop_x0, row.crop_y0, row.crop_x1, row.crop_y1))
            assert 5 <= x0 < x1 <= float(row.orig_width) - 5 and 5 <= y0 < y1 <= float(row.orig_height) - 5


def test_provenance_and_logs(demo):
    record = json.loads((demo / "results/preprocess/vindr/manifest.provenance.json").read_text())
    assert record["stage"] == "preprocess" and record["dataset"] == "vindr"
    assert record["seed"] == 7 and record["legacy"] is False
    assert (record["width"], record["height"], record["failed"]) == (80, 128, 0)
    assert record["code_version"].startswith("0.1.0+")
    for name in ("phantoms/vindr.log", "preprocess/vindr/shard_0.log", "preprocess/vindr/shard_1.log"):
        assert (demo / "logs" / name).stat().st_size > 0
    assert "shard 1/2" in (demo / "logs/preprocess/vindr/shard_1.log").read_text()


def test_annotation_and_report_tables(demo):
    from mammoclip.annotations.reports import read_pretraining_table
    from mammoclip.annotations.tables import read_table

    findings = pd.read_csv(demo / "resources/phantoms/vindr/finding_annotations.csv")
    rows = read_table(demo / "results/annotations/vindr/vindr_detection_v1_folds.csv")
    assert len(rows) == len(findings) and list(rows.columns[:5]) == [
        "patient_id",
        "series_id",
        "image_id",
        "laterality",
        "view",
    ]
    boxed = rows[rows["No_Finding"] == 0]
    assert len(boxed) == findings["xmin"].notna().sum() > 0
    assert (boxed["resized_xmin"] >= 0).all() and (boxed["resized_xmax"] <= 80).all()
    assert (boxed["resized_ymin"] >= 0).all() and (boxed["resized_ymax"] <= 128).all()
    assert rows.loc[rows["No_Finding"] == 1, "resized_xmin"].isna().all()
    labels = pd.read_csv(demo / "results/annotations/vindr/clip_vindr_final.csv")
    assert len(labels) == 2 * findings["study_id"].nunique()  # one row per breast

    folds = pd.read_csv(demo / "results/annotations/rsna/train_folds.csv", dtype={"patient_id": str})
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2]  # annotations.rsna_folds: 3

    reports = read_pretraining_table(demo / "results/reports/inhouse/clip_pretrain.csv")
    assert list(reports.columns) == [
        "patient_id",
        "laterality",
        "image",
        "view",
        "CC",
        "MLO",
        "text",
        "findings",
        "impressions",
        "text_augment",
        "fold",
    ]
    assert len(reports) == 8  # 4 patients x 2 breasts
    assert all(len(t) == 2 and t == a for t, a in zip(reports["text"], reports["text_augment"], strict=True))
    # no sentence periods survive cleaning; only decimal points inside numbers (legacy: false)
    assert not any(re.search(r"\.(?!\d)", t) for row in reports["text"] for t in row)


def test_embeddings_and_scores_of_every_dataset(demo):
    from mammoclip.inference import read_embeddings

    for dataset in ("vindr", "rsna", "inhouse"):
        manifest = pd.read_csv(demo / "results/preprocess" / dataset / "manifest.csv", dtype=str)
        ids, raw, projected, meta = read_embeddings(
            demo / "results/embeddings" / dataset / "tiny-clip.parquet"
        )
        assert sorted(ids) == sorted(manifest["image_id"])
        assert projected.shape == (len(ids), 32) and raw.shape[0] == len(ids)
        assert meta["checkpoint"].endswith("tiny-clip.tar") and (meta["height"], meta["width"]) == (128, 80)
        scores = pd.read_csv(demo / "results/scores" / dataset / "tiny-clip.csv", dtype={"image_id": str})
        assert set(scores["task"]) == {"mass", "suspicious_calcification", "malignancy", "density"}
        assert len(scores) == len(ids) * (3 * 2 + 4)
        sums = scores.groupby(["image_id", "task"])["probability"].sum()
        assert ((sums - 1).abs() < 1e-6).all()


def test_missing_translation_models_stop_the_rule_with_instructions(demo, tmp_path):
    workdir = tmp_path / "bt"
    shutil.copytree(demo, workdir, ignore=shutil.ignore_patterns(".snakemake"))
    models = workdir / "models"
    models.mkdir()
    config = {**TINY, "reports": {"augmentation": {"method": "back_translation", "model_dir": str(models)}}}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--forcerun", "augment_reports", "--", "reports", check=False)
    assert result.returncode != 0
    message = (workdir / "logs/reports/augment.log").read_text()
    assert str(models / "opus-mt-en-it") in message
    assert "Helsinki-NLP/opus-mt-en-it" in message and "reports.augmentation.method: none" in message
    assert not (workdir / "results/reports/inhouse/clip_pretrain.csv").exists()


def test_classifier_runs_write_metrics_predictions_and_provenance(demo):
    expected = {
        ("paper", "vindr", "Mass", "lp", "0.5", 0),
        ("paper", "vindr", "Mass", "lp", "1", 0),
        ("paper", "vindr", "Mass", "ft", "1", 0),
        ("paper", "vindr", "density", "lp", "1", 0),
        ("paper", "rsna", "cancer", "lp", "1", 0),
        *{("clean", "vindr", "Mass", m, f, 0) for m, f in (("lp", "0.5"), ("lp", "1"), ("ft", "1"))},
        ("clean", "vindr", "density", "lp", "1", 0),
        *{("clean", "rsna", "cancer", "lp", "1", k) for k in range(3)},
    }
    found = set()
    for path in (demo / "results/classify").rglob("metrics.csv"):
        metrics = pd.read_csv(path, dtype={"model": str})
        row = metrics.iloc[0]
        found.add((row.protocol, row.dataset, row.label, row.setting, f"{row.data_frac:g}", int(row.fold)))
        run = path.parent
        assert (run / "model.pt").stat().st_size > 0 and (run / "history.csv").exists()
        assert metrics["checkpoint"].str.endswith("tiny-clip.tar").all()
        assert metrics["code_version"].str.startswith("0.1.0+").all()
        assert metrics["paper_model"].eq("mc_enb5").all()
        record = json.loads((run / "provenance.json").read_text())
        assert record["protocol"] == row.protocol and record["seed"] == 10
        predictions = pd.read_csv(run / "predictions.csv", dtype={"image_id": str})
        assert record["n_rows"]["report"] == len(predictions)
        if row.label == "density":
            assert set(metrics["metric"]) == {"accuracy", "macro_f1"}
            assert metrics.loc[metrics["metric"] == "accuracy", "majority_baseline"].between(0, 1).all()
        else:
            assert predictions["probability"].between(0, 1).all()
    assert found == expected


def test_tables_plots_and_report(demo, tmp_path):
    for protocol in ("paper", "clean"):
        table = pd.read_csv(demo / f"results/tables/{protocol}/classification.csv")
        assert set(table["protocol"]) == {protocol}
        mass_lp = table[(table["label"] == "Mass") & (table["setting"] == "lp")]
        assert sorted(mass_lp["data_frac"].dropna()) == [0.1, 0.5, 1.0]  # 0.1: the paper's cell only
        ours = mass_lp.set_index("data_frac")["tiny-clip mean"]
        assert ours.loc[[0.5, 1.0]].notna().all() and pd.isna(ours.loc[0.1])
        assert mass_lp.set_index("data_frac")["paper mc_enb5"].tolist() == [0.73, 0.78, 0.79]
        markdown = (demo / f"results/tables/{protocol}/classification.md").read_text()
        assert f"{protocol} protocol" in markdown and "| vindr | Mass | AUROC | zero-shot |" in markdown
        for label in ("Mass", "density", "cancer"):
            png = cv2.imread(str(demo / f"results/tables/{protocol}/efficiency_{label}.png"))
            assert png is not None and png.shape == (600, 900, 3)
        # ROC figures of the enabled binary labels (density is multiclass: none)
        for label in ("Mass", "cancer"):
            png = cv2.imread(str(demo / f"results/tables/{protocol}/roc_{label}.png"))
            assert png is not None and png.shape == (600, 900, 3)
        assert not (demo / f"results/tables/{protocol}/roc_density.png").exists()
        assert "AUROC" in (demo / f"logs/tables/roc_{protocol}_Mass.log").read_text()
    report = tmp_path / "report.zip"
    snakemake(demo, "--report", str(report))
    assert report.stat().st_size > 10_000


def test_detector_runs_write_metrics_detections_and_provenance(demo):
    found = set()
    for path in (demo / "results/detect").rglob("metrics.csv"):
        metrics = pd.read_csv(path, dtype={"model": str})
        row = metrics.iloc[0]
        found.add((row.protocol, row.dataset, row.label, row.setting, f"{row.data_frac:g}", int(row.fold)))
        expected = {"map50"} | ({"cpm"} | {f"sensitivity_at_{r:g}" for r in (0.125, 0.25, 0.5, 1, 2, 4)})
        assert set(metrics["metric"]) == (expected if row.protocol == "clean" else {"map50"})
        assert metrics["checkpoint"].str.endswith("tiny-clip.tar").all()
        assert metrics["paper_model"].eq("mc_enb5").all() and metrics["seed"].eq(10).all()
        run = path.parent
        assert run.relative_to(demo).as_posix() == (
            f"results/detect/{row.protocol}/vindr/Mass/tiny-clip/{row.setting}/frac1/fold0_seed10"
        )
        assert (run / "model.pt").stat().st_size > 0 and (run / "history.csv").exists()
        detections = pd.read_csv(run / "detections.csv", dtype={"image_id": str})
        assert list(detections.columns) == ["image_id", "patient_id", "score", "xmin", "ymin", "xmax", "ymax"]
        assert (detections["xmax"] <= 80 + 1e-3).all() and (detections["ymax"] <= 128 + 1e-3).all()
        record = json.loads((run / "provenance.json").read_text())
        assert record["protocol"] == row.protocol and record["detector"]["input_width"] == 80
        assert (record["detector"]["fpn_channels"], record["detector"]["head_norm"]) == (32, "group_norm")
        assert record["n_images"]["report"] == row.n_images
        log = demo / f"logs/detect/{row.protocol}/vindr/Mass/tiny-clip/{row.setting}_frac1_fold0_seed10.log"
        assert "outside the crop" in log.read_text()
    assert found == {(p, "vindr", "Mass", m, "1", 0) for p in ("paper", "clean") for m in ("freeze", "ft")}


def test_detection_tables_froc_plots_and_panels(demo):
    for protocol in ("paper", "clean"):
        table = pd.read_csv(demo / f"results/tables/{protocol}/detection.csv")
        assert set(table["protocol"]) == {protocol}
        mass = table[(table["label"] == "Mass") & (table["metric"] == "map50")]
        assert {"freeze", "ft"} <= set(mass["setting"])
        markdown = (demo / f"results/tables/{protocol}/detection.md").read_text()
        assert f"{protocol} protocol" in markdown and "| Mass |" in markdown
        assert ("CPM" in markdown) == (protocol == "clean")
        for name in ("froc_Mass.png", "detections_Mass.png"):
            png = cv2.imread(str(demo / f"results/tables/{protocol}/{name}"))
            assert png is not None and png.shape[0] >= 400, name


def test_factor_runs_write_heatmaps_scores_and_provenance(demo):
    images = pd.read_csv(demo / "results/annotations/vindr/vindr_images.csv", dtype={"image_id": str})
    embeddings = np.load(demo / "results/factor/tiny-clip/attribute_embeddings.npz")
    assert list(embeddings["attributes"]) == ["mass", "suspicious_calcification"]
    assert embeddings["embeddings"].shape == (2, 32)
    assert np.allclose(np.linalg.norm(embeddings["embeddings"], axis=1), 1.0, atol=1e-5)
    sentences = json.loads((demo / "results/factor/tiny-clip/attribute_embeddings.json").read_text())[
        "sentences"
    ]
    assert "there is a mass in the left breast" in sentences["mass"]
    for protocol in ("paper", "clean"):
        run = demo / f"results/factor/{protocol}/tiny-clip/seed10"
        test = images[images["split"] == "test"]
        if protocol == "paper":
            test = test[(test["Mass"] == 1) | (test["Suspicious_Calcification"] == 1)]
        with np.load(run / "heatmaps.npz") as heat:
            assert sorted(heat["image_id"]) == sorted(test["image_id"])
            assert heat["heatmaps"].shape == (len(test), 2, 4, 3) and heat["heatmaps"].dtype == np.float16
            assert heat["scores"].shape == (len(test), 2) and int(heat["stride"]) == 32
        metrics = pd.read_csv(run / "metrics.csv", dtype={"model": str})
        mass = metrics[metrics["label"] == "Mass"].set_index("metric")
        assert list(mass.index) == ["iou_hit@0.25", "iou_hit@0.50", "pointing_game", "pointing_random"]
        assert mass["value"].between(0, 1).all() and (mass["value_low"] <= mass["value_high"]).all()
        assert 0 < mass.loc["pointing_random", "value"] < 0.2
        assert set(metrics["setting"]) == {"weak"} and metrics["paper_model"].eq("mc_enb5").all()
        assert metrics["checkpoint"].str.endswith("tiny-clip.tar").all() and metrics["seed"].eq(10).all()
        per_image = pd.read_csv(run / "localisation_per_image.csv", dtype={"image_id": str})
        boxes = pd.read_csv(demo / "results/annotations/vindr/vindr_boxes.csv", dtype={"image_id": str})
        with_mass = boxes[
            boxes["finding_categories"].str.contains("Mass") & boxes["image_id"].isin(test["image_id"])
        ]
        assert sorted(per_image.loc[per_image["label"] == "Mass", "image_id"]) == sorted(
            set(with_mass["image_id"])
        )
        assert per_image["peak_x"].between(0, 80).all() and per_image["peak_y"].between(0, 128).all()
        history = pd.read_csv(run / "history.csv")
        assert list(history["epoch"]) == [1, 2] and history["selected"].sum() == 1
        import torch

        saved = torch.load(run / "mapper.pt", weights_only=True)
        assert saved["metadata"]["protocol"] == protocol and saved["metadata"]["info"]["map_shape"] == [4, 3]
        assert saved["metadata"]["mapper"]["legacy"] is False
        assert not (run / "mapper.last.pt").exists()  # the resume state goes once the mapper is written
        record = json.loads((run / "localisation.json").read_text())
        assert record["percentile"] == 95 and record["n_report_images"] == len(test)
        assert "selected epoch" in (demo / f"logs/factor/{protocol}/tiny-clip/seed10_train.log").read_text()


def test_localisation_tables_and_heatmap_overlays(demo):
    for protocol in ("paper", "clean"):
        table = pd.read_csv(demo / f"results/tables/{protocol}/localisation.csv")
        mass = table[table["label"] == "Mass"].set_index("metric")
        assert {"iou_hit@0.25", "iou_hit@0.50", "pointing_game", "pointing_random"} <= set(mass.index)
        assert mass.loc["iou_hit@0.25", "paper mc_enb5"] == pytest.approx(0.45)
        assert mass.loc["iou_hit@0.50", "paper mc_enb5"] == pytest.approx(0.37)
        markdown = (demo / f"results/tables/{protocol}/localisation.md").read_text()
        assert f"{protocol} protocol" in markdown and "pointing game" in markdown and "| Mass |" in markdown
        for attribute in ("mass", "suspicious_calcification"):
            png = cv2.imread(str(demo / f"results/tables/{protocol}/heatmaps_{attribute}.png"))
            assert png is not None and png.shape[0] >= 200, attribute


def test_changing_localisation_settings_keeps_the_mappers(demo):
    config = yaml.safe_load((demo / "config/config.yaml").read_text())
    config["factor"]["percentile"] = 90
    overlay = demo / "config" / "factor-percentile.yaml"
    overlay.write_text(yaml.safe_dump(config))
    jobs = _planned_jobs(snakemake(demo, "-n", "--configfile", str(overlay)).stdout)
    assert sorted(w["protocol"] for name, w in jobs if name == "factor_localise") == ["clean", "paper"]
    assert {name for name, _ in jobs} == {"factor_localise", "localisation_table", "all"}
    config["factor"]["percentile"] = 95
    config["factor"]["lr"] = 2.0e-3
    overlay.write_text(yaml.safe_dump(config))
    jobs = _planned_jobs(snakemake(demo, "-n", "--configfile", str(overlay)).stdout)
    assert {name for name, _ in jobs} == {"factor_train", "factor_localise", "localisation_table", "all"}


def _planned_jobs(stdout: str) -> list[tuple[str, dict]]:
    jobs = []
    for block in stdout.split("\nrule ")[1:]:
        name = block.split(":", 1)[0].strip()
        wildcards = re.search(r"wildcards: (.*)", block)
        pairs = dict(p.split("=", 1) for p in wildcards.group(1).split(", ")) if wildcards else {}
        jobs.append((name, pairs))
    return jobs


def test_changing_one_label_reruns_only_its_jobs(demo):
    config = yaml.safe_load((demo / "config/config.yaml").read_text())
    config["classify"]["labels"]["density"]["lr"] = 2.0e-3
    overlay = demo / "config" / "density-lr.yaml"
    overlay.write_text(yaml.safe_dump(config))
    jobs = _planned_jobs(snakemake(demo, "-n", "--configfile", str(overlay)).stdout)
    classify = [w for name, w in jobs if name == "classify"]
    assert len(classify) == 2 and {w["label"] for w in classify} == {"density"}
    assert {name for name, _ in jobs} == {"classify", "classification_table", "all"}


def test_changing_one_detector_mode_reruns_only_its_jobs(demo):
    config = yaml.safe_load((demo / "config/config.yaml").read_text())
    config["detect"]["labels"]["Mass"]["mode_overrides"] = {"ft": {"lr": 2.0e-3}}
    overlay = demo / "config" / "detect-ft-lr.yaml"
    overlay.write_text(yaml.safe_dump(config))
    jobs = _planned_jobs(snakemake(demo, "-n", "--configfile", str(overlay)).stdout)
    detect = [w for name, w in jobs if name == "detect"]
    assert sorted(w["protocol"] for w in detect) == ["clean", "paper"]
    assert {(w["label"], w["mode"]) for w in detect} == {("Mass", "ft")}
    assert {name for name, _ in jobs} == {"detect", "detection_table", "all"}
    # the settings of a label without runs, and of the classifiers' Mass, leave the detectors alone
    config = yaml.safe_load((demo / "config/config.yaml").read_text())
    config["detect"]["labels"]["Suspicious_Calcification"]["epochs"] = 5
    config["classify"]["labels"]["Mass"]["lr"] = 2.0e-3
    overlay.write_text(yaml.safe_dump(config))
    jobs = _planned_jobs(snakemake(demo, "-n", "--configfile", str(overlay)).stdout)
    assert {name for name, _ in jobs} == {"classify", "classification_table", "roc_plot", "all"}
    assert [w["label"] for name, w in jobs if name == "roc_plot"] == ["Mass", "Mass"]


def test_named_targets_ask_for_one_table(demo):
    jobs = _planned_jobs(
        snakemake(demo, "-n", "--forcerun", "classification_table", "--", "table_clean").stdout
    )
    tables = [w for name, w in jobs if name == "classification_table"]
    assert [w["protocol"] for w in tables] == ["clean"]
    jobs = _planned_jobs(
        snakemake(demo, "-n", "--forcerun", "detection_table", "--", "table_detection_paper").stdout
    )
    assert [w["protocol"] for name, w in jobs if name == "detection_table"] == ["paper"]


def test_nothing_to_do_on_rerun(demo):
    assert "Nothing to be done" in snakemake(demo, "-n").stdout


def test_a_configured_checkpoint_replaces_pretraining(demo):
    plan = snakemake(demo, "-n", "--forceall").stdout
    assert "rule embed_images:" in plan and "rule pretrain:" not in plan and "tiny_text_model" not in plan


def test_bad_files_are_recorded_then_fail_the_stage_over_the_limit(demo, tmp_path):
    workdir = tmp_path / "bad"
    shutil.copytree(demo, workdir, ignore=shutil.ignore_patterns(".snakemake"))
    truth = pd.read_csv(workdir / "resources/phantoms/rsna/phantom_truth.csv", dtype=str)
    truncated = workdir / "resources/phantoms/rsna" / truth.loc[0, "dicom_path"]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    not_dicom = workdir / "resources/phantoms/rsna" / truth.loc[1, "dicom_path"]
    not_dicom.write_text("this is not a DICOM file\n")

    failed = snakemake(workdir, "--forcerun", "convert_shard", "--", "preprocess", check=False)
    assert failed.returncode != 0
    join_log = (workdir / "logs/preprocess/rsna/join.log").read_text()
    assert str(truncated.relative_to(workdir)) in join_log and str(not_dicom.relative_to(workdir)) in join_log
    assert not (workdir / "results/preprocess/rsna/manifest.csv").exists()
    # the other datasets are unaffected, and the shard manifests keep the reasons
    assert (workdir / "results/preprocess/vindr/manifest.csv").exists()
    shards = pd.concat(
        pd.read_csv(p, dtype=str) for p in (workdir / "results/preprocess/rsna/shards").glob("*.csv")
    )
    reasons = dict(zip(shards["source_path"], shards["reason"].fillna(""), strict=True))
    assert reasons[str(truncated.relative_to(workdir))].startswith("truncated")
    assert reasons[str(not_dicom.relative_to(workdir))].startswith("not_dicom")
    assert not Path(workdir, shards.loc[shards["status"] == "failed", "png_path"].iloc[0]).exists()

    snakemake(workdir, "preprocess", "--config", "preprocess={max_failed_fraction: 0.5}")
    manifest = pd.read_csv(workdir / "results/preprocess/rsna/manifest.csv", dtype=str)
    assert (manifest["status"] == "failed").sum() == 2


def test_png_release_input_builds_the_manifest_without_converting(demo, tmp_path):
    png_root = demo / "results/png/rsna"
    config = {
        **TINY,
        "datasets": {
            "vindr": {"enabled": False},
            "inhouse": {"enabled": False},
            "rsna": {
                "source": "png",
                "root": str(png_root),
                "metadata_csv": str(demo / "resources/phantoms/rsna/train.csv"),
                "png_template": "{patient_id}/{image_id}.png",
            },
        },
    }
    workdir = make_workdir(tmp_path / "png", config)
    result = snakemake(workdir)
    assert "phantom_rsna" not in result.stdout + result.stderr
    assert "no model: set `pretrained_checkpoint`" in result.stderr  # nothing to pretrain on, said so
    manifest = pd.read_csv(workdir / "results/preprocess/rsna/manifest.csv", dtype=str)
    assert (manifest["status"] == "ok").all()
    assert (manifest["png_path"] == manifest["source_path"]).all()
    assert all(p.startswith(str(png_root)) for p in manifest["png_path"])
    assert not (workdir / "results/png").exists()
    assert set(manifest["png_height"]) == {"128"}


def test_vindr_png_release_takes_boxes_from_upstreams_table(demo, tmp_path):
    """The authors' PNG release (912 x 1520, no crop box) with upstream's row table as the box source."""
    from mammoclip.annotations.tables import read_table, write_table

    manifest = pd.read_csv(demo / "results/preprocess/vindr/manifest.csv", dtype=str)
    png_root = tmp_path / "release"
    for row in manifest.itertuples():
        path = Path(row.png_path) if Path(row.png_path).is_absolute() else demo / row.png_path
        study = path.parent.name
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        (png_root / study).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(png_root / study / f"{row.image_id}.png"), cv2.resize(img, (912, 1520)))
    ours = read_table(demo / "results/annotations/vindr/vindr_detection_v1_folds.csv")
    release = ours.iloc[:, :33].copy()  # upstream's 33 columns, boxes in its 912 x 1520 frame
    scale = {
        "resized_xmin": 912 / 80,
        "resized_xmax": 912 / 80,
        "resized_ymin": 1520 / 128,
        "resized_ymax": 1520 / 128,
    }
    for column, factor in scale.items():
        release[column] = release[column] * factor
    write_table(release, tmp_path / "vindr_detection_v1_folds.csv")
    phantom = demo / "resources/phantoms/vindr"
    vindr = {
        "source": "png",
        "root": str(png_root),
        "metadata_csv": str(phantom / "breast-level_annotations.csv"),
        "findings_csv": str(phantom / "finding_annotations.csv"),
        "png_template": "{study_id}/{image_id}.png",
    }
    config = {
        **TINY,
        "datasets": {"rsna": {"enabled": False}, "inhouse": {"enabled": False}, "vindr": vindr},
        "annotations": {
            **TINY["annotations"],
            "vindr_box_table": str(tmp_path / "vindr_detection_v1_folds.csv"),
        },
    }
    workdir = make_workdir(tmp_path / "wf", config)
    snakemake(workdir, "results/annotations/vindr/provenance.json")
    boxes = read_table(workdir / "results/annotations/vindr/vindr_boxes.csv")
    expected = read_table(demo / "results/annotations/vindr/vindr_boxes.csv")
    assert len(boxes) == len(expected) > 0
    for column, factor in scale.items():
        np.testing.assert_allclose(boxes[column], expected[column] * factor, rtol=1e-12)
    provenance = json.loads((workdir / "results/annotations/vindr/provenance.json").read_text())
    assert provenance["boxes"]["box_source"].endswith("vindr_detection_v1_folds.csv")
    assert provenance["boxes"]["boxes_mapped"] == int(expected["resized_xmin"].notna().sum())
    # the same table with converted DICOMs is refused before any job runs
    dicom = {**config, "datasets": {**config["datasets"], "vindr": {"enabled": True}}}
    failed = snakemake(make_workdir(tmp_path / "wf2", dicom), "-n", check=False)
    assert failed.returncode != 0
    assert "'annotations.vindr_box_table' is for the authors' PNG release" in failed.stdout + failed.stderr
