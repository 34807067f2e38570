"""ROC curves (mammoclip.evaluate.roc, plots.roc_figure, the roc_plot stage): points and AUROC as sklearn
computes them, on the rows the classification table evaluates, and reproducible PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from mammoclip import stages
from mammoclip.annotations.tables import write_table
from mammoclip.downstream import run_metrics
from mammoclip.evaluate.roc import (
    ROC_CURVE_COLUMNS,
    classifier_scores,
    roc_curves,
    select_runs,
    zero_shot_scores,
)
from mammoclip.evaluate.zeroshot import evaluate_rsna, evaluate_vindr, primary_set, rsna_sets
from mammoclip.inference import score_table
from mammoclip.plots import SETTING_COLOURS, roc_figure, roc_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scores(setting, y, score, *, model="m", level="image", runs=""):
    return pd.DataFrame(
        {
            "setting": setting,
            "model": model,
            "level": level,
            "runs": runs,
            "patient_id": [f"p{i}" for i in range(len(y))],
            "y": y,
            "score": score,
        }
    )


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.3).astype(int)
    return pd.concat(
        [
            _scores("ft", y, y * 0.5 + rng.random(60), runs="fold 0, seed 10"),
            _scores("zs", y, rng.random(60)),
            _scores("lp", y, y * 0.2 + rng.random(60), runs="fold 0, seed 10"),
        ],
        ignore_index=True,
    )


def test_roc_curves_are_sklearns(scores):
    curves = roc_curves(scores)
    assert list(curves.columns) == ROC_CURVE_COLUMNS
    # zero-shot, linear probe, finetune, whatever the input order
    assert list(dict.fromkeys(curves["setting"])) == ["zs", "lp", "ft"]
    for setting, curve in curves.groupby("setting"):
        rows = scores[scores["setting"] == setting]
        fpr, tpr, threshold = roc_curve(rows["y"], rows["score"])
        assert np.array_equal(curve["fpr"], fpr) and np.array_equal(curve["tpr"], tpr)
        assert np.array_equal(curve["threshold"], threshold)
        assert (curve["auroc"] == roc_auc_score(rows["y"], rows["score"])).all()
        assert (curve["n"] == 60).all() and (curve["n_pos"] == rows["y"].sum()).all()
    # one class only: no curve, an undefined AUROC
    one_class = roc_curves(_scores("zs", [0, 0, 0], [0.1, 0.5, 0.9]))
    assert len(one_class) == 1 and one_class[["auroc", "fpr", "tpr"]].isna().all().all()
    assert roc_curves(scores.iloc[:0]).empty
    with pytest.raises(ValueError, match="missing columns"):
        roc_curves(scores.drop(columns=["score"]))


def _predictions(images, labels, probabilities, *, patients=None, laterality=None):
    return pd.DataFrame(
        {
            "part": "report",
            "patient_id": patients or [f"p{i}" for i in images],
            "image_id": [str(i) for i in images],
            "laterality": laterality or ["L"] * len(images),
            "label": labels,
            "probability": probabilities,
        }
    )


def _key(mode, fold, seed=10, model="m"):
    return {"model": model, "mode": mode, "fold": fold, "seed": seed}


def test_select_runs_first_seed_and_out_of_fold_pooling():
    same = _predictions([1, 2], [0, 1], [0.2, 0.8])
    other = _predictions([3, 4], [1, 0], [0.6, 0.4])
    runs = [
        (_key("lp", 1), other),
        (_key("lp", 0), same),
        (_key("lp", 2), same.copy()),  # reports fold 0's images again (VinDr): left out
        (_key("lp", 0, seed=11), other),  # a later seed: left out
    ]
    chosen = select_runs(runs)
    assert [(k["fold"], k["seed"]) for k, _ in chosen] == [(0, 10), (1, 10)]
    assert select_runs([]) == []


def test_classifier_scores_rsna_breasts_pooled_over_folds():
    # fold 0: patient a (L positive, 2 images) and b; fold 1: patient c and d
    fold0 = _predictions(
        [1, 2, 3], [1, 1, 0], [0.9, 0.5, 0.4], patients=["a", "a", "b"], laterality=["L", "L", "R"]
    )
    fold1 = _predictions([4, 5], [0, 1], [0.3, 0.6], patients=["c", "d"])
    scores = classifier_scores(
        [(_key("ft", 0), fold0), (_key("ft", 1), fold1)], dataset="rsna", protocol="clean"
    )
    assert (scores["level"] == "breast").all() and (scores["runs"] == "folds 0+1 pooled, seed 10").all()
    # a/L: mean 0.7, positive; b/R 0.4; c/L 0.3; d/L 0.6 positive
    assert scores[["patient_id", "y"]].values.tolist() == [["a", 1], ["b", 0], ["c", 0], ["d", 1]]
    assert scores["score"].tolist() == pytest.approx([0.7, 0.4, 0.3, 0.6])
    # VinDr: the rows as predicted, the first fold only when both report the test split
    vindr = classifier_scores(
        [(_key("lp", 1), fold0.assign(probability=0.5)), (_key("lp", 0), fold0)],
        dataset="vindr",
        protocol="paper",
    )
    assert (vindr["level"] == "finding rows").all() and (vindr["runs"] == "fold 0, seed 10").all()
    assert vindr["score"].tolist() == [0.9, 0.5, 0.4]
    assert classifier_scores([], dataset="vindr", protocol="clean").empty


def test_zero_shot_scores_take_the_tables_set():
    folds = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "patient_id": ["1", "1", "2", "2", "3", "3"],
            "laterality": ["L", "L", "R", "R", "L", "L"],
            "cancer": [1, 1, 0, 0, 0, 0],
            "fold": [0, 0, 0, 0, 1, 1],
        }
    )
    probabilities = [0.8, 0.4, 0.5, 0.1, 0.9, 0.7]
    prompt_scores = score_table(
        list("abcdef"), [[1 - p, p] for p in probabilities], ["no", "yes"], task="malignancy"
    )
    table = evaluate_rsna(prompt_scores, folds, n_boot=0)
    for protocol in ("paper", "clean"):
        evaluation = primary_set(rsna_sets(prompt_scores, folds), label="cancer", protocol=protocol)
        curve = roc_curves(zero_shot_scores(evaluation, model="m"))
        result = table[(table["protocol"] == protocol) & table["primary"]].iloc[0]
        # the curve's rows are the table's: same level, size and AUROC
        assert curve["level"].iloc[0] == result["level"] and curve["n"].iloc[0] == result["n"]
        assert curve["auroc"].iloc[0] == pytest.approx(result["value"])
    assert curve["level"].iloc[0] == "breast" and curve["n"].iloc[0] == 3


# ---- the stage on tiny files ---------------------------------------------------------------------------


@pytest.fixture
def vindr_files(tmp_path):
    """VinDr clean protocol: 12 test images (one with two finding rows), prompt scores, two validation
    folds' linear probe predictions (both report the test split) and one finetune run."""
    rng = np.random.default_rng(0)
    n = 12
    mass = np.array([1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    images = pd.DataFrame(
        {
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "image_id": [f"i{i}.png" for i in range(n)],
            "laterality": ["L", "R"] * (n // 2),
            "split": ["test"] * n,
            "Mass": mass,
        }
    )
    images = pd.concat(
        [images, images.iloc[[0]].assign(split="training", image_id="t0.png")], ignore_index=True
    )
    rows = pd.concat([images, images.iloc[[1]].assign(Mass=1)], ignore_index=True)
    probability = np.clip(mass * 0.4 + rng.random(n) * 0.6, 0, 1)
    prompt_scores = score_table(
        [f"i{i}" for i in range(n)] + ["t0"],
        [[1 - p, p] for p in [*probability, 0.5]],
        ["no mass", "mass"],
        task="mass",
    )
    paths = {
        "rows": tmp_path / "rows.csv",
        "images": tmp_path / "images.csv",
        "scores": tmp_path / "scores.csv",
    }
    write_table(rows, paths["rows"])
    write_table(images, paths["images"])
    prompt_scores.to_csv(paths["scores"], index=False)
    test = images[images["split"] == "test"].assign(label=mass, image_id=[f"i{i}" for i in range(n)])
    runs, predictions = [], []
    for mode, fold, scale in (("lp", 0, 0.5), ("lp", 1, 0.1), ("ft", 0, 0.8)):
        _, frame = run_metrics(
            test,
            np.clip(mass * scale + rng.random(n) * (1 - scale), 0, 1),
            dataset="vindr",
            protocol="clean",
            n_classes=1,
            train_labels=[0, 1],
            n_boot=0,
            seed=0,
        )
        path = tmp_path / f"{mode}{fold}.csv"
        write_table(frame.assign(part="report"), path)
        runs.append(
            {
                "protocol": "clean",
                "label": "Mass",
                "model": "m",
                "mode": mode,
                "frac": "1",
                "fold": fold,
                "seed": 10,
            }
        )
        predictions.append(path)
    return {**paths, "runs": runs, "predictions": predictions, "prompt_scores": prompt_scores}


def _stage(files, plot):
    return stages.roc_plot(
        predictions=files["predictions"],
        runs=files["runs"],
        scores=[files["scores"]],
        models=["m"],
        tables={"rows": files["rows"], "images": files["images"]},
        plot=plot,
        label="Mass",
        protocol="clean",
    )


def test_roc_plot_stage_draws_the_tables_rows(vindr_files, tmp_path):
    curves = _stage(vindr_files, tmp_path / "roc_Mass.png")
    summary = curves.drop_duplicates("setting").set_index("setting")
    assert list(summary.index) == ["zs", "lp", "ft"]
    # zero-shot: the 12 test images of the clean protocol (not the finding rows, not training images)
    from mammoclip.annotations.tables import read_table

    tables = {
        k: read_table(vindr_files[k], str_columns=("patient_id", "image_id")) for k in ("rows", "images")
    }
    table = evaluate_vindr(vindr_files["prompt_scores"], **tables, n_boot=0).set_index("protocol")
    assert summary.loc["zs", "n"] == table.loc["clean", "n"] == 12
    assert summary.loc["zs", "auroc"] == pytest.approx(table.loc["clean", "value"])
    # linear probe: fold 0 only (fold 1 reports the same images); its AUROC is the run's
    lp = pd.read_csv(vindr_files["predictions"][0])
    assert summary.loc["lp", "runs"] == "fold 0, seed 10"
    assert summary.loc["lp", "auroc"] == pytest.approx(roc_auc_score(lp["label"], lp["probability"]))
    with Image.open(tmp_path / "roc_Mass.png") as img:
        assert img.size == (900, 600)
    with pytest.raises(ValueError, match="one run key per predictions file"):
        _stage({**vindr_files, "runs": vindr_files["runs"][:1]}, tmp_path / "bad.png")


def test_roc_figure_lines_and_legend(scores):
    curves = roc_curves(scores)
    figure = roc_figure(curves, title="vindr Mass: ROC (clean protocol)")
    ax = figure.axes[0]
    chance, *lines = ax.lines
    assert chance.get_xydata().tolist() == [[0, 0], [1, 1]] and chance.get_linestyle() == "--"
    assert [line.get_color() for line in lines] == [SETTING_COLOURS[s] for s in ("zs", "lp", "ft")]
    zs = curves[curves["setting"] == "zs"]
    assert np.array_equal(lines[0].get_xdata(), zs["fpr"]) and np.array_equal(lines[0].get_ydata(), zs["tpr"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    auroc = zs["auroc"].iloc[0]
    assert legend[0] == "chance (AUROC 0.5)"
    assert legend[1] == f"zero-shot: AUROC {auroc:.3f}\nimage, n = 60 ({zs['n_pos'].iloc[0]} positive)"
    assert legend[2].startswith("linear probe: AUROC") and legend[2].endswith("\nfold 0, seed 10")
    undefined = roc_figure(roc_curves(_scores("zs", [0, 0], [0.1, 0.2])), title="t")
    assert "undefined (one class)" in undefined.axes[0].get_legend().get_texts()[1].get_text()


def test_roc_plot_png_is_reproducible(scores, tmp_path):
    curves = roc_curves(scores)
    a = roc_plot(curves, tmp_path / "a.png", title="ROC")
    b = roc_plot(roc_curves(scores.copy()), tmp_path / "b.png", title="ROC")
    data = a.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == b.read_bytes()
    assert b"Software" not in data and b"tIME" not in data
    with Image.open(a) as img:
        assert img.size == (900, 600)
    c = roc_plot(curves[curves["setting"] != "ft"], tmp_path / "c.png", title="ROC")
    assert c.read_bytes() != data
