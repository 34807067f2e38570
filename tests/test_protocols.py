"""mammoclip.evaluate.protocols: paper / clean splits and data fractions on small synthetic fold tables."""

from __future__ import annotations

import pandas as pd
import pytest

from mammoclip.evaluate.protocols import (
    PROTOCOLS,
    rsna_fold_roles,
    rsna_folds_to_run,
    sample_fraction,
    split_detection,
    split_rsna,
    split_vindr,
)


def _patients(part: pd.DataFrame) -> set:
    return set(part["patient_id"])


def _assert_patient_disjoint(parts: dict) -> None:
    assert not _patients(parts["train"]) & _patients(parts["report"])
    assert not _patients(parts["train"]) & _patients(parts["select"])


@pytest.fixture
def rsna() -> pd.DataFrame:
    """40 patients, 1-4 images each, patient-level folds 0-3 (patient i -> fold i % 4), 5 positives."""
    rows = []
    for p in range(40):
        for i in range(1 + p % 4):
            rows.append(
                {
                    "patient_id": f"P{p:03d}",
                    "image_id": f"P{p:03d}_{i}",
                    "laterality": "LR"[i % 2],
                    "cancer": int(p % 8 == 3),
                    "fold": p % 4,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def vindr_rows() -> pd.DataFrame:
    """Row table: 30 patients (10 test), 4 images each, some images with 2 finding rows; val_fold p % 5."""
    rows = []
    for p in range(30):
        test = p < 10
        for i in range(4):
            for r in range(1 + (p + i) % 5 // 4):  # images with (p + i) % 5 == 4 get two rows
                rows.append(
                    {
                        "patient_id": f"S{p:03d}",
                        "image_id": f"S{p:03d}_{i}.png",
                        "split": "test" if test else "training",
                        "Mass": int(r == 1),
                        "density": p % 4,
                        "val_fold": -1 if test else p % 5,
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture
def vindr_images(vindr_rows) -> pd.DataFrame:
    return vindr_rows.groupby("image_id", sort=False, as_index=False).agg(
        patient_id=("patient_id", "first"),
        split=("split", "first"),
        Mass=("Mass", "max"),
        density=("density", "first"),
        val_fold=("val_fold", "first"),
    )


# ---- RSNA ----


def test_paper_rsna_trains_on_folds_1_2_and_selects_on_reported_fold_0(rsna):
    parts = split_rsna(rsna, protocol="paper", fold=0)
    assert set(parts) == {"train", "select", "report"}
    assert parts["train"].index.equals(rsna.index[rsna["fold"].isin([1, 2])])
    assert parts["report"].index.equals(rsna.index[rsna["fold"] == 0])
    assert parts["select"].equals(parts["report"])  # model selection on the reported fold (upstream defect)
    used = parts["train"].index.union(parts["report"].index)
    assert set(rsna.loc[rsna.index.difference(used), "fold"]) == {3}  # fold 3 never used
    assert (rsna["fold"] == 3).sum() == len(rsna) - len(used)
    _assert_patient_disjoint(parts)
    assert rsna_folds_to_run("paper") == [0]
    with pytest.raises(ValueError, match="fold 0 only"):
        split_rsna(rsna, protocol="paper", fold=1)


def test_clean_rsna_rotates_all_folds(rsna):
    assert rsna_folds_to_run("clean") == [0, 1, 2, 3]
    reported = []
    for k in rsna_folds_to_run("clean"):
        parts = split_rsna(rsna, protocol="clean", fold=k)
        roles = rsna_fold_roles("clean", k)
        assert set(parts["report"]["fold"]) == {k} and roles["report"] == (k,)
        assert set(parts["select"]["fold"]) == {(k + 1) % 4}
        assert set(parts["train"]["fold"]) == set(range(4)) - {k, (k + 1) % 4}
        assert sum(len(p) for p in parts.values()) == len(rsna)  # every row in exactly one part
        for a, b in [("train", "select"), ("train", "report"), ("select", "report")]:
            assert not _patients(parts[a]) & _patients(parts[b])
        reported.extend(parts["report"].index)
    assert sorted(reported) == list(rsna.index)  # out-of-fold: each image reported once


def test_rsna_checks(rsna):
    straddling = rsna.copy()
    straddling.loc[straddling["image_id"] == "P001_0", "fold"] = 2  # P001 (fold 1) now also in fold 2
    with pytest.raises(ValueError, match="patients in both"):
        split_rsna(straddling, protocol="clean", fold=0)
    with pytest.raises(ValueError, match="folds must be 0..K-1"):
        split_rsna(rsna[rsna["fold"] != 1], protocol="clean", fold=0)
    with pytest.raises(ValueError, match="unknown protocol"):
        split_rsna(rsna, protocol="upstream")
    assert PROTOCOLS == ("paper", "clean")


# ---- VinDr ----


def test_paper_vindr_selects_and_reports_on_test_rows(vindr_rows):
    assert vindr_rows["image_id"].duplicated().any()  # a row table
    parts = split_vindr(vindr_rows, protocol="paper", val_fold=3)  # val_fold ignored
    assert parts["train"].index.equals(vindr_rows.index[vindr_rows["split"] == "training"])
    assert parts["report"].index.equals(vindr_rows.index[vindr_rows["split"] == "test"])
    assert parts["select"].equals(parts["report"])
    _assert_patient_disjoint(parts)


@pytest.mark.parametrize("k", range(5))
def test_clean_vindr_selects_on_a_validation_fold(vindr_images, k):
    parts = split_vindr(vindr_images, protocol="clean", val_fold=k)
    training = vindr_images["split"] == "training"
    assert set(parts["select"]["val_fold"]) == {k} and (parts["select"]["split"] == "training").all()
    assert len(parts["select"]) == (training & (vindr_images["val_fold"] == k)).sum()
    assert k not in set(parts["train"]["val_fold"]) and (parts["train"]["split"] == "training").all()
    assert parts["report"].index.equals(vindr_images.index[~training])
    assert sum(len(p) for p in parts.values()) == len(vindr_images)
    _assert_patient_disjoint(parts)
    assert not _patients(parts["select"]) & _patients(parts["report"])


def test_clean_vindr_checks(vindr_rows, vindr_images):
    with pytest.raises(ValueError, match="image table"):
        split_vindr(vindr_rows, protocol="clean")
    with pytest.raises(ValueError, match="not one of the training folds"):
        split_vindr(vindr_images, protocol="clean", val_fold=7)
    bad = vindr_images.copy()
    bad.loc[bad.index[-1], "split"] = "validation"
    with pytest.raises(ValueError, match="split values"):
        split_vindr(bad, protocol="paper")
    straddling = vindr_images.copy()
    first_training = straddling.index[straddling["split"] == "training"][0]
    straddling.loc[first_training, "val_fold"] = (straddling.loc[first_training, "val_fold"] + 1) % 5
    with pytest.raises(ValueError, match="patients in both"):
        split_vindr(straddling, protocol="clean", val_fold=int(straddling.loc[first_training, "val_fold"]))


# ---- data fractions ----


def test_paper_fraction_is_upstream_row_sample(rsna):
    train = split_rsna(rsna, protocol="paper")["train"]
    out = sample_fraction(train, fraction=0.3, protocol="paper", seed=123)
    pd.testing.assert_frame_equal(out, train.sample(frac=0.3, random_state=1))
    pd.testing.assert_frame_equal(out, sample_fraction(train, fraction=0.3, protocol="paper", seed=7))
    pd.testing.assert_frame_equal(sample_fraction(train, fraction=1.0, protocol="paper", seed=0), train)


def test_clean_fraction_keeps_whole_patients_and_is_seeded(rsna):
    out = sample_fraction(rsna, fraction=0.25, protocol="clean", seed=0)
    assert out["patient_id"].nunique() == 10  # round(0.25 * 40)
    for patient, rows in out.groupby("patient_id"):
        assert rows.index.equals(rsna.index[rsna["patient_id"] == patient])  # all its rows, in order
    again = sample_fraction(rsna, fraction=0.25, protocol="clean", seed=0)
    pd.testing.assert_frame_equal(out, again)
    others = {
        frozenset(sample_fraction(rsna, fraction=0.25, protocol="clean", seed=s)["patient_id"])
        for s in range(5)
    }
    assert len(others) > 1
    # independent of row order
    shuffled = rsna.sample(frac=1.0, random_state=9)
    assert _patients(sample_fraction(shuffled, fraction=0.25, protocol="clean", seed=0)) == _patients(out)


def test_clean_fraction_keeps_a_positive_patient(rsna):
    only_one = rsna[~rsna["patient_id"].isin(["P011", "P019", "P027", "P035"])]  # leaves P003 positive
    assert only_one.groupby("patient_id")["cancer"].max().sum() == 1
    for seed in range(20):
        out = sample_fraction(only_one, fraction=0.05, protocol="clean", seed=seed, label_column="cancer")
        assert out["cancer"].max() == 1
        assert out["patient_id"].nunique() == 3  # 1 positive + round(0.05 * 35) = 2 negatives
    stratified = sample_fraction(rsna, fraction=0.4, protocol="clean", seed=1, label_column="cancer")
    assert stratified.groupby("patient_id")["cancer"].max().tolist().count(1) == 2  # round(0.4 * 5)
    with pytest.raises(ValueError, match="fraction"):
        sample_fraction(rsna, fraction=0.0, protocol="clean", seed=0)
    with pytest.raises(ValueError, match="0/1"):
        sample_fraction(rsna.assign(cancer=2), fraction=0.5, protocol="clean", seed=0, label_column="cancer")


# ---- detection ----


def test_paper_detection_uses_positive_images_only(vindr_images):
    parts = split_detection(vindr_images, label="Mass", protocol="paper", val_fold=0, seed=3)
    positive = vindr_images[vindr_images["Mass"] == 1]
    pd.testing.assert_frame_equal(parts["train"], positive[positive["split"] == "training"])
    pd.testing.assert_frame_equal(parts["report"], positive[positive["split"] == "test"])
    pd.testing.assert_frame_equal(parts["select"], parts["report"])  # upstream selects on the test split
    assert all((part["Mass"] == 1).all() for part in parts.values())


def test_clean_detection_trains_with_negatives_and_reports_all_test_images(vindr_images):
    parts = split_detection(vindr_images, label="Mass", protocol="clean", val_fold=1, seed=3)
    training = vindr_images[vindr_images["split"] == "training"]
    pd.testing.assert_frame_equal(parts["train"], training[training["val_fold"] != 1])
    pd.testing.assert_frame_equal(parts["select"], training[training["val_fold"] == 1])
    pd.testing.assert_frame_equal(parts["report"], vindr_images[vindr_images["split"] == "test"])
    assert set(parts["report"]["Mass"]) == {0, 1} and set(parts["train"]["Mass"]) == {0, 1}
    _assert_patient_disjoint(parts)
    assert not _patients(parts["select"]) & _patients(parts["report"])


def test_clean_detection_subsamples_negatives_seeded(vindr_images):
    full = split_detection(vindr_images, label="Mass", protocol="clean", val_fold=0)["train"]
    negatives = full[full["Mass"] == 0]
    half = split_detection(
        vindr_images, label="Mass", protocol="clean", val_fold=0, seed=5, negative_fraction=0.5
    )
    train = half["train"]
    pd.testing.assert_frame_equal(train[train["Mass"] == 1], full[full["Mass"] == 1])  # every positive
    assert (train["Mass"] == 0).sum() == round(0.5 * len(negatives))
    assert train.index.is_monotonic_increasing  # input order
    again = split_detection(
        vindr_images, label="Mass", protocol="clean", val_fold=0, seed=5, negative_fraction=0.5
    )
    pd.testing.assert_frame_equal(train, again["train"])
    others = {
        frozenset(
            split_detection(
                vindr_images, label="Mass", protocol="clean", val_fold=0, seed=s, negative_fraction=0.5
            )["train"]["image_id"]
        )
        for s in range(5)
    }
    assert len(others) > 1
    none = split_detection(vindr_images, label="Mass", protocol="clean", val_fold=0, negative_fraction=0.0)
    assert (none["train"]["Mass"] == 1).all()
    pd.testing.assert_frame_equal(none["select"], half["select"])  # selection and report keep negatives


def test_detection_fraction_of_the_training_part(vindr_images):
    train = split_detection(vindr_images, label="Mass", protocol="clean", val_fold=0)["train"]
    sample = sample_fraction(train, fraction=0.5, protocol="clean", seed=1, label_column="Mass")
    assert sample["Mass"].max() == 1 and sample["Mass"].min() == 0
    for patient, rows in sample.groupby("patient_id"):
        assert rows.index.equals(train.index[train["patient_id"] == patient])


def test_detection_checks(vindr_images, vindr_rows):
    with pytest.raises(ValueError, match="duplicated image_id"):
        split_detection(vindr_rows, label="Mass", protocol="clean")
    with pytest.raises(ValueError, match="0/1"):
        split_detection(vindr_images.assign(Mass=2), label="Mass", protocol="paper")
    with pytest.raises(ValueError, match="missing columns"):
        split_detection(vindr_images, label="Suspicious_Calcification", protocol="paper")
    with pytest.raises(ValueError, match="negative_fraction"):
        split_detection(vindr_images, label="Mass", protocol="clean", negative_fraction=1.5)
    with pytest.raises(ValueError, match="no training image with a box"):
        split_detection(vindr_images.assign(Mass=0), label="Mass", protocol="clean")
    with pytest.raises(ValueError, match="unknown protocol"):
        split_detection(vindr_images, label="Mass", protocol="other")
    with pytest.raises(ValueError, match="no rows"):  # no positive test image
        split_detection(
            vindr_images.assign(Mass=vindr_images["split"].eq("training").astype(int)),
            label="Mass",
            protocol="paper",
        )
