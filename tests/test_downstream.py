"""One classifier run (mammoclip.downstream, and the classify stage): tables, protocol parts, metrics and
the run's files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammoclip.downstream import label_table, primary_predictions, run_metrics, run_parts
from mammoclip.runs import RunKey
from mammoclip.stages import classify

H, W = 64, 48


def vindr_tables(n_patients: int = 24, seed: int = 0) -> dict[str, pd.DataFrame]:
    """VinDr-like row and image tables: 2 images per patient, some images with two finding rows."""
    rng = np.random.default_rng(seed)
    images = []
    for p in range(n_patients):
        split = "test" if p % 4 == 0 else "training"
        mass = int(p % 3 == 0)
        for view in ("CC", "MLO"):
            images.append(
                {
                    "patient_id": f"p{p:02d}",
                    "image_id": f"p{p:02d}{view}.png",
                    "laterality": "L",
                    "view": view,
                    "split": split,
                    "Mass": mass,
                    "Suspicious_Calcification": int(rng.random() < 0.3),
                    "density": int(rng.integers(0, 4)),
                    "png_path": f"png/p{p:02d}{view}.png",
                    "val_fold": -1 if split == "test" else (p // 2) % 3,
                }
            )
    images = pd.DataFrame(images)
    # finding rows: masses appear twice (two boxes), upstream's row table
    rows = pd.concat([images, images[images["Mass"] == 1]], ignore_index=True)
    return {"rows": rows, "images": images}


def rsna_table(n_patients: int = 32) -> pd.DataFrame:
    out = []
    for p in range(n_patients):
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                out.append(
                    {
                        "patient_id": str(1000 + p),
                        "image_id": f"{p}{lat}{view}",
                        "laterality": lat,
                        "view": view,
                        "cancer": int(p % 4 == 1 and lat == "L"),
                        "fold": p % 4,
                        "png_path": f"png/{p}{lat}{view}.png",
                    }
                )
    return pd.DataFrame(out)


# ---- tables ----------------------------------------------------------------------------------------


def test_label_table_picks_rows_for_paper_and_images_for_clean():
    tables = vindr_tables()
    paper = label_table(tables, dataset="vindr", label="Mass", protocol="paper")
    clean = label_table(tables, dataset="vindr", label="Mass", protocol="clean")
    assert len(paper) == len(tables["rows"]) and len(clean) == len(tables["images"])
    assert clean["image_id"].str.endswith(".png").sum() == 0
    assert clean["label"].dtype == np.int64 and clean["path"].iloc[0] == "png/p00CC.png"


def test_label_table_drops_failed_images_and_rejects_bad_labels():
    tables = vindr_tables()
    images = tables["images"].copy()
    images.loc[3, "png_path"] = np.nan
    out = label_table({"images": images}, dataset="vindr", label="density", protocol="clean")
    assert len(out) == len(images) - 1
    images.loc[5, "density"] = 7
    with pytest.raises(ValueError, match=r"'density' must hold \[0, 1, 2, 3\], found 7"):
        label_table({"images": images}, dataset="vindr", label="density", protocol="clean")
    with pytest.raises(ValueError, match="belongs to dataset 'rsna'"):
        label_table(tables, dataset="vindr", label="cancer", protocol="clean")


# ---- parts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["paper", "clean"])
@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_no_patient_in_training_and_test_under_either_protocol(protocol, fraction):
    vindr = label_table(vindr_tables(), dataset="vindr", label="Mass", protocol=protocol)
    rsna = label_table({"folds": rsna_table()}, dataset="rsna", label="cancer", protocol=protocol)
    for dataset, table in (("vindr", vindr), ("rsna", rsna)):
        for fold in [0] if protocol == "paper" else [0, 1]:
            parts = run_parts(
                table, dataset=dataset, protocol=protocol, fold=fold, fraction=fraction, seed=3, binary=True
            )
            train = set(parts["train"]["patient_id"])
            assert train and not train & set(parts["report"]["patient_id"])
            if protocol == "clean":
                assert not train & set(parts["select"]["patient_id"])
                assert not set(parts["select"]["patient_id"]) & set(parts["report"]["patient_id"])


def test_paper_parts_select_on_the_reported_split_and_sample_rows():
    table = label_table({"folds": rsna_table()}, dataset="rsna", label="cancer", protocol="paper")
    parts = run_parts(table, dataset="rsna", protocol="paper", fold=0, fraction=1.0, seed=3, binary=True)
    assert set(parts["train"]["fold"]) == {1, 2} and set(parts["report"]["fold"]) == {0}
    assert parts["select"].equals(parts["report"])
    half = run_parts(table, dataset="rsna", protocol="paper", fold=0, fraction=0.5, seed=99, binary=True)
    # row-level sampling with upstream's fixed random_state=1, whatever the seed
    expected = parts["train"].sample(frac=0.5, random_state=1)
    assert half["train"].index.tolist() == expected.index.tolist()
    with pytest.raises(ValueError, match="fold 0 only"):
        run_parts(table, dataset="rsna", protocol="paper", fold=1, fraction=1.0, seed=3, binary=True)


def test_clean_fraction_keeps_whole_patients_and_a_positive():
    table = label_table(vindr_tables(), dataset="vindr", label="Mass", protocol="clean")
    parts = run_parts(table, dataset="vindr", protocol="clean", fold=0, fraction=0.1, seed=1, binary=True)
    train = parts["train"]
    per_patient = train.groupby("patient_id").size()
    assert (per_patient == 2).all()  # both images of every kept patient
    assert train["label"].sum() > 0


# ---- metrics ---------------------------------------------------------------------------------------


def test_binary_metrics_hand_computed_and_rsna_breast_level():
    report = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "b", "c", "c"],
            "image_id": list("123456"),
            "laterality": ["L", "L", "L", "L", "R", "R"],
            "label": [1, 1, 0, 0, 0, 0],
        }
    )
    probs = np.array([0.9, 0.2, 0.3, 0.1, 0.4, 0.5])
    metrics, predictions = run_metrics(
        report, probs, dataset="rsna", protocol="paper", n_classes=1, train_labels=[0, 1], n_boot=0, seed=0
    )
    image = metrics[metrics["level"] == "image"].iloc[0]
    breast = metrics[metrics["level"] == "breast"].iloc[0]
    # image level: positives 0.9, 0.2 vs negatives 0.3, 0.1, 0.4, 0.5 -> (4 + 1) / 8
    assert image["value"] == pytest.approx(5 / 8) and not image["primary"]
    # breast level: a/L mean 0.55 > b/L 0.2, c/R 0.45 -> 1.0
    assert breast["value"] == pytest.approx(1.0) and breast["primary"]
    assert predictions["probability"].tolist() == probs.tolist()
    # the primary rows (the ROC curves' too): one per breast, mean probability, any positive image
    breasts, level = primary_predictions(predictions, dataset="rsna", protocol="paper")
    assert level == "breast" and breasts["probability"].tolist() == pytest.approx([0.55, 0.2, 0.45])
    assert breasts["label"].tolist() == [1, 0, 0] and breasts["n_rows"].tolist() == [2, 2, 2]
    rows, level = primary_predictions(predictions, dataset="vindr", protocol="paper")
    assert level == "finding rows" and rows is predictions
    assert primary_predictions(predictions, dataset="vindr", protocol="clean")[1] == "image"


def test_density_accuracy_f1_and_training_majority_baseline():
    labels = np.array([0, 1, 2, 2, 3, 2])
    probs = np.eye(4)[[0, 1, 2, 1, 3, 2]] * 0.7 + 0.075
    report = pd.DataFrame({"patient_id": list("abcdef"), "image_id": list("abcdef"), "label": labels})
    metrics, predictions = run_metrics(
        report,
        probs,
        dataset="vindr",
        protocol="clean",
        n_classes=4,
        train_labels=[1, 1, 1, 2],
        n_boot=50,
        seed=0,
    )
    acc = metrics.set_index("metric").loc["accuracy"]
    assert acc["value"] == pytest.approx(5 / 6)
    # majority class of the TRAINING labels is 1: one test image of class 1 -> 1/6
    assert acc["majority_baseline"] == pytest.approx(1 / 6)
    assert acc["value_low"] <= acc["value"] <= acc["value_high"]
    assert np.isnan(metrics.set_index("metric").loc["macro_f1", "majority_baseline"])
    assert predictions["predicted"].tolist() == [0, 1, 2, 1, 3, 2]


def test_vindr_binary_auroc_matches_sklearn_on_rows():
    rng = np.random.default_rng(0)
    report = pd.DataFrame(
        {"patient_id": [f"p{i // 2}" for i in range(40)], "image_id": [str(i) for i in range(40)]}
    )
    report["label"] = (rng.random(40) < 0.3).astype(int)
    probs = np.clip(report["label"] * 0.3 + rng.random(40) * 0.7, 0, 1)
    metrics, _ = run_metrics(
        report, probs, dataset="vindr", protocol="paper", n_classes=1, train_labels=[0, 1], n_boot=100, seed=0
    )
    assert len(metrics) == 1 and metrics["level"].iloc[0] == "finding rows"
    assert metrics["value"].iloc[0] == pytest.approx(roc_auc_score(report["label"], probs))


# ---- a whole run -----------------------------------------------------------------------------------


def _write_pngs(table: pd.DataFrame, root) -> pd.DataFrame:
    """Images whose brightness carries the Mass label, so a probe can learn it."""
    rng = np.random.default_rng(0)
    table = table.copy()
    for _, row in table.drop_duplicates("image_id").iterrows():
        base = 60 + 120 * row["Mass"]
        image = np.clip(rng.normal(base, 20, (H, W)), 0, 255).astype(np.uint8)
        path = root / row["png_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
    table["png_path"] = [str(root / p) for p in table["png_path"]]
    return table


@pytest.mark.parametrize("mode", ["lp", "ft"])
def test_classify_stage_writes_files_with_provenance(tmp_path, tiny_clip_checkpoint, mode):
    images = _write_pngs(vindr_tables()["images"], tmp_path)
    images_csv = tmp_path / "vindr_images.csv"
    images.to_csv(images_csv, index=False)
    outputs = {
        k: str(tmp_path / f"out.{k}") for k in ("metrics", "predictions", "history", "model", "provenance")
    }
    settings = {"epochs": 2, "batch_size": 4, "lr": 1e-3}
    kwargs = dict(
        key=RunKey(
            protocol="clean",
            dataset="vindr",
            label="Mass",
            model="tiny",
            mode=mode,
            fraction=1.0,
            fold=0,
            seed=5,
        ),
        checkpoint=str(tiny_clip_checkpoint),
        tables={"images": str(images_csv)},
        settings=settings,
        outputs=outputs,
        height=H,
        width=W,
        augment=mode == "ft",
        n_boot=20,
        paper_model="mc_enb5",
        device="cpu",
    )
    metrics = classify(**kwargs)
    assert metrics[["dataset", "label", "setting", "protocol", "fold", "seed"]].iloc[0].tolist() == [
        "vindr",
        "Mass",
        mode,
        "clean",
        0,
        5,
    ]
    assert metrics["checkpoint"].iloc[0] == str(tiny_clip_checkpoint)
    assert metrics["code_version"].iloc[0].startswith("0.")
    predictions = pd.read_csv(outputs["predictions"])
    n_test = int((images["split"] == "test").sum())
    assert len(predictions) == n_test and predictions["probability"].between(0, 1).all()
    history = pd.read_csv(outputs["history"])
    assert len(history) == 2 and history["selected"].sum() == 1
    record = json.loads(Path(outputs["provenance"]).read_text())
    assert record["protocol"] == "clean" and record["classifier"]["mode"] == MODES_FULL[mode]
    assert record["n_rows"]["report"] == n_test
    # the same config gives the same numbers on the CPU
    first = pd.read_csv(outputs["metrics"])
    classify(**kwargs)
    pd.testing.assert_frame_equal(first, pd.read_csv(outputs["metrics"]))
    with pytest.raises(ValueError, match="unknown setting"):
        classify(**{**kwargs, "settings": {"epoch": 3}})


MODES_FULL = {"lp": "linear_probe", "ft": "finetune"}


def test_linear_probe_on_cached_embeddings_learns(tmp_path):
    from mammoclip.inference import write_embeddings

    images = vindr_tables(n_patients=40)["images"]
    images_csv = tmp_path / "vindr_images.csv"
    images.to_csv(images_csv, index=False)
    rng = np.random.default_rng(0)
    ids = images["image_id"].str.removesuffix(".png").tolist()
    raw = rng.normal(size=(len(ids), 16)).astype(np.float32)
    raw[:, 0] += 6.0 * images["Mass"].to_numpy()
    emb = tmp_path / "emb.parquet"
    write_embeddings(emb, ids, raw, raw[:, :4], metadata={"checkpoint": "x"})
    outputs = {
        k: str(tmp_path / f"out.{k}") for k in ("metrics", "predictions", "history", "model", "provenance")
    }
    metrics = classify(
        key=RunKey(
            protocol="clean",
            dataset="vindr",
            label="Mass",
            model="m",
            mode="lp",
            fraction=1.0,
            fold=0,
            seed=0,
        ),
        checkpoint="unused.tar",
        tables={"images": str(images_csv)},
        settings={"epochs": 20, "lr": 1e-2},
        outputs=outputs,
        height=H,
        width=W,
        embeddings=str(emb),
        n_boot=0,
        device="cpu",
    )
    assert bool(metrics["cached_embeddings"].iloc[0])
    assert metrics["value"].iloc[0] > 0.85  # chance is 0.5; 4 positive test patients
