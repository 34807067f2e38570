"""Zero-shot evaluation: positive class, paper vs clean subsets and levels, hand-computed AUROCs."""

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammoclip.evaluate.zeroshot import (
    evaluate_rsna,
    evaluate_vindr,
    positive_scores,
    primary_set,
    rsna_sets,
    vindr_sets,
)
from mammoclip.inference import score_table


def _scores(task, classes, probabilities):
    ids = list(probabilities)
    positive = [probabilities[i] for i in ids]
    return score_table(ids, [[1 - p, p] for p in positive], classes, task=task)


def test_positive_class_is_the_tasks_last_class():
    scores = _scores("mass", ["no mass", "mass"], {"a": 0.9, "b": 0.2})
    assert positive_scores(scores, "mass").set_index("image_id")["score"].to_dict() == {"a": 0.9, "b": 0.2}
    with pytest.raises(ValueError, match="no scores for task 'calc'"):
        positive_scores(scores, "calc")


def _vindr_tables():
    # i1 has two finding rows (a mass and a calcification): counted twice by the paper protocol,
    # once with Mass 0 - the row-level label conflict upstream's numbers include
    rows = pd.DataFrame(
        {
            "image_id": ["i1.png", "i1.png", "i2.png", "i3.png", "i4.png", "i9.png"],
            "split": ["test"] * 5 + ["training"],
            "Mass": [1, 0, 0, 1, 0, 1],
            "Suspicious_Calcification": [0, 1, 0, 0, 0, 0],
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p9"],
        }
    )
    images = pd.DataFrame(
        {
            "image_id": ["i1.png", "i2.png", "i3.png", "i4.png"],
            "split": ["test"] * 4,
            "Mass": [1, 0, 1, 0],
            "patient_id": ["p1", "p2", "p3", "p4"],
        }
    )
    return rows, images


def test_vindr_paper_counts_finding_rows_clean_counts_images():
    scores = _scores("mass", ["no mass", "mass"], {"i1": 0.9, "i2": 0.6, "i3": 0.3, "i4": 0.1})
    rows, images = _vindr_tables()
    results = evaluate_vindr(scores, rows, images, n_boot=50).set_index("protocol")
    assert results.loc["paper", "n"] == 5 and results.loc["clean", "n"] == 4
    # paper: positives {0.9, 0.3} vs negatives {0.9, 0.6, 0.1}: (0.5 + 1 + 1 + 0 + 0 + 1) / 6
    assert results.loc["paper", "value"] == pytest.approx(3.5 / 6)
    # clean: positives {0.9, 0.3} vs negatives {0.6, 0.1}: 3 of 4 pairs ranked right
    assert results.loc["clean", "value"] == pytest.approx(0.75)
    assert set(results["level"]) == {"finding rows", "image"} and (results["setting"] == "zs").all()


def _rsna_inputs():
    folds = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e", "f"],
            "patient_id": ["1", "1", "2", "2", "3", "3"],
            "laterality": ["L", "L", "R", "R", "L", "L"],
            "cancer": [1, 1, 0, 0, 0, 0],
            "fold": [0, 0, 0, 0, 1, 1],
        }
    )
    scores = _scores(
        "malignancy",
        ["no malignancy", "malignancy"],
        dict(zip("abcdef", [0.8, 0.4, 0.5, 0.1, 0.9, 0.7], strict=True)),
    )
    return scores, folds


def test_rsna_paper_is_fold_0_per_image_clean_is_all_breasts():
    scores, folds = _rsna_inputs()
    everything = evaluate_rsna(scores, folds, n_boot=50)
    assert everything[["protocol", "level", "primary"]].values.tolist() == [
        ["paper", "image", True],
        ["paper", "breast", False],
        ["clean", "image", False],
        ["clean", "breast", True],
    ]
    # the other level of each protocol: paper breasts 1L 0.6 vs 2R 0.3 -> 1.0;
    # clean images: a beats c, d, f and b beats d: 4 of 8
    assert everything.loc[1, "value"] == pytest.approx(1.0)
    assert everything.loc[2, "value"] == pytest.approx(4 / 8)
    results = everything[everything["primary"]].set_index("protocol")
    # paper, fold 0 images: positives {0.8, 0.4} vs negatives {0.5, 0.1}: 3 of 4
    assert results.loc["paper", "n"] == 4 and results.loc["paper", "value"] == pytest.approx(0.75)
    # clean, breasts: 1L mean 0.6 (positive) vs 2R 0.3 and 3L 0.8: 1 of 2
    assert results.loc["clean", "n"] == 3 and results.loc["clean", "value"] == pytest.approx(0.5)
    assert results.loc["clean", "level"] == "breast"


def test_missing_scores_are_an_error_naming_the_image():
    scores = _scores("malignancy", ["no", "yes"], {"a": 0.5})
    folds = pd.DataFrame(
        {
            "image_id": ["a", "zz"],
            "patient_id": ["1", "2"],
            "laterality": ["L", "L"],
            "cancer": [1, 0],
            "fold": [0, 0],
        }
    )
    with pytest.raises(ValueError, match="1 image\\(s\\) have no score, e.g. zz"):
        evaluate_rsna(scores, folds, n_boot=10)


def test_vindr_density_zero_shot_accuracy_from_argmax_class():
    classes = ["fatty", "scattered", "heterogeneous", "extreme"]
    probs = {
        "a": [0.7, 0.1, 0.1, 0.1],
        "b": [0.1, 0.1, 0.7, 0.1],
        "c": [0.1, 0.6, 0.2, 0.1],
        "d": [0.1, 0.1, 0.1, 0.7],
    }
    scores = pd.DataFrame(
        [
            {"image_id": i, "task": "density", "class": c, "probability": p[k]}
            for i, p in probs.items()
            for k, c in enumerate(classes)
        ]
    )
    images = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "d.png"],
            "patient_id": ["1", "2", "3", "4"],
            "split": ["test"] * 4,
            "density": [0, 2, 2, 3],
        }
    )
    rows = pd.concat([images, images.iloc[[1]]], ignore_index=True)  # image b has two finding rows
    out = evaluate_vindr(scores, rows, images, n_boot=20).set_index(["protocol", "metric"])
    # clean, per image: predicted 0, 2, 1, 3 vs 0, 2, 2, 3 -> 3/4; majority (2) of the labels -> 2/4
    assert out.loc[("clean", "accuracy"), "value"] == pytest.approx(0.75)
    assert out.loc[("clean", "accuracy"), "majority_baseline"] == pytest.approx(0.5)
    # paper, finding rows: b counted twice -> 4/5
    assert out.loc[("paper", "accuracy"), "value"] == pytest.approx(0.8)
    assert out.loc[("paper", "accuracy"), "n"] == 5


def test_evaluation_sets_are_the_rows_each_result_is_computed_on():
    """The ROC curves read these sets: each one's size and AUROC are its result row's."""
    scores, folds = _rsna_inputs()
    vindr_scores = _scores("mass", ["no mass", "mass"], {"i1": 0.9, "i2": 0.6, "i3": 0.3, "i4": 0.1})
    for sets, results in (
        (rsna_sets(scores, folds), evaluate_rsna(scores, folds, n_boot=20)),
        (
            vindr_sets(vindr_scores, *_vindr_tables()),
            evaluate_vindr(vindr_scores, *_vindr_tables(), n_boot=20),
        ),
    ):
        assert len(sets) == len(results)
        for evaluation, result in zip(sets, results.itertuples(), strict=True):
            assert (evaluation.label, evaluation.protocol, evaluation.level, evaluation.primary) == (
                result.label,
                result.protocol,
                result.level,
                result.primary,
            )
            frame = evaluation.frame
            assert len(frame) == result.n
            assert roc_auc_score(frame[evaluation.label], frame["score"]) == pytest.approx(result.value)
    clean = primary_set(rsna_sets(scores, folds), label="cancer", protocol="clean")
    assert clean.level == "breast" and sorted(clean.frame["score"].round(6)) == [0.3, 0.6, 0.8]
    with pytest.raises(ValueError, match="0 primary zero-shot sets"):
        primary_set(rsna_sets(scores, folds), label="Mass", protocol="clean")
