"""The README's main command on the embedded demo config: phantoms -> PNG -> tables -> pretraining ->
embeddings and zero-shot scores, and the pretrained tiny model has learnt the planted masses."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "config", workdir / "config")
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
    ]
    result = subprocess.run(
        [*command, "--cores", "2"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_pretraining_outputs(demo_run):
    from mammoclip.checkpoints import load_clip

    metrics = pd.read_csv(demo_run / "results/pretrain/metrics.csv")
    val = metrics[metrics["split"] == "val"]
    assert val["epoch"].tolist() == list(range(1, 16))
    assert val["loss"].iloc[-1] < val["loss"].iloc[0]  # validation loss went down
    model, _, info = load_clip(demo_run / "results/pretrain/model-best.tar")
    assert info["format"] == "mammoclip" and info["metadata"]["epoch"] in range(1, 16)
    assert (demo_run / "results/pretrain/run/last.pt").exists()
    mode = (demo_run / "results/pretrain/model-best.tar").stat().st_mode
    assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0  # protected output


def test_zero_shot_mass_scores_learnt_the_planted_masses(demo_run):
    scores = pd.read_csv(demo_run / "results/scores/vindr/mammoclip.csv", dtype={"image_id": str})
    images = pd.read_csv(demo_run / "results/annotations/vindr/vindr_images.csv", dtype={"image_id": str})
    images["image_id"] = images["image_id"].str.removesuffix(".png")
    mass = scores[(scores["task"] == "mass") & (scores["class"] == "mass")].merge(images, on="image_id")
    assert len(mass) == 400  # every image of the 100 studies
    # measured 0.83 on the 160 test-split images; chance is 0.5
    assert roc_auc_score(mass["Mass"], mass["probability"]) > 0.7


def test_zero_shot_results_of_both_protocols(demo_run):
    results = pd.read_csv(demo_run / "results/zeroshot/vindr/mammoclip.csv")
    mass = results[results["label"] == "Mass"].set_index("protocol")
    # clean: the 160 test-split images; paper: the test split's 172 finding rows (one per box)
    assert mass["n"].to_dict() == {"paper": 172, "clean": 160}
    assert (mass["value_low"] <= mass["value"]).all() and (mass["value"] <= mass["value_high"]).all()
    rsna = pd.read_csv(demo_run / "results/zeroshot/rsna/mammoclip.csv")
    primary = rsna[rsna["primary"]].set_index("protocol")
    assert primary.loc["clean", "level"] == "breast" and primary.loc["paper", "subset"] == "fold == 0"
    assert sorted(rsna["level"]) == ["breast", "breast", "image", "image"]
    assert (results["checkpoint"] == "results/pretrain/model-best.tar").all()


def _table(demo_run, protocol):
    table = pd.read_csv(demo_run / f"results/tables/{protocol}/classification.csv")
    return table.set_index(["label", "metric", "setting", "data_frac"]).sort_index()


@pytest.mark.parametrize("protocol", ["paper", "clean"])
def test_tables_show_every_finding_learnt(demo_run, protocol):
    """The demo's tables show what the method does (issue 15): zero-shot above chance for every binary
    label, linear probes at least 0.8 AUROC, density above its majority baseline, intervals about +-0.1.

    Measured on the demo's seed (paper / clean): zero-shot Mass 0.80 / 0.83, Suspicious_Calcification
    0.80 / 0.84, RSNA cancer 0.82 / 0.93, lower bounds all >= 0.67; linear probe 100 % Mass 0.81 / 0.84,
    Suspicious_Calcification 0.81 / 0.84; density linear probe 100 % 0.72 / 0.65 against a majority
    baseline of 0.29 / 0.30. The margins leave room for another CPU's arithmetic.
    """
    table = _table(demo_run, protocol)
    for label in ("Mass", "Suspicious_Calcification"):
        rows = table.loc[(label, "auroc")]
        zs, lp = rows.loc[("zs", 1.0)], rows.loc[("lp", 1.0)]
        assert zs["mammoclip low"] > 0.6 and lp["mammoclip low"] > 0.6, (label, zs, lp)
        assert lp["mammoclip mean"] >= 0.75
        for _, row in rows.iterrows():  # 160 test images: every interval within about +-0.15
            assert row["mammoclip high"] - row["mammoclip low"] < 0.3
    assert table.loc[("Suspicious_Calcification", "auroc", "lp", 1.0), "paper mc_enb5_vindr"] == 0.96
    cancer = table.loc[("cancer", "auroc", "zs", 1.0)]
    assert cancer["mammoclip low"] > 0.55
    density = table.loc[("density", "accuracy", "lp", 1.0)]
    assert density["mammoclip low"] > density["majority baseline"] + 0.05
    assert table.loc[("density", "accuracy", "zs", 1.0), "mammoclip mean"] >= 0  # the density prompts ran
    rsna = table.loc[("cancer", "auroc", "ft", 1.0)]
    assert rsna["mammoclip n"] == (2 if protocol == "clean" else 1)  # demo: RSNA folds 0 and 1
    markdown = (demo_run / f"results/tables/{protocol}/classification.md").read_text()
    assert f"{protocol} protocol" in markdown.splitlines()[0]
    for label in ("Mass", "Suspicious_Calcification", "density", "cancer"):
        assert (demo_run / f"results/tables/{protocol}/efficiency_{label}.png").stat().st_size > 5000
    for label in ("Mass", "Suspicious_Calcification", "cancer"):
        assert (demo_run / f"results/tables/{protocol}/roc_{label}.png").stat().st_size > 5000


def test_demo_detector_finds_the_planted_masses(demo_run):
    """Mass detectors (finetuned, 100 %) under both protocols; the clean one reports all 160 test images.

    Measured on the demo's seed 10: clean AP@0.5 0.56 [0.42, 0.71], CPM 0.68, paper AP@0.5 0.69 (with the
    demo's earlier b0 encoder and 32 test images, seeds 10-12 gave clean AP 0.64-0.71); a detector that
    has learnt nothing scores about 0.0. The bounds leave room for another CPU's arithmetic, which changes
    the run as another seed would.
    """
    runs = {}
    for protocol in ("paper", "clean"):
        run = demo_run / f"results/detect/{protocol}/vindr/Mass/mammoclip/ft/frac1/fold0_seed10"
        runs[protocol] = pd.read_csv(run / "metrics.csv").set_index("metric")
        assert (run / "model.pt").stat().st_size > 0
        table = pd.read_csv(demo_run / f"results/tables/{protocol}/detection.csv")
        ours = table[table["metric"] == "map50"].dropna(subset=["mammoclip mean"])
        assert ours[["label", "setting", "data_frac"]].values.tolist() == [["Mass", "ft", 1.0]]
        assert ours["paper mc_enb5_vindr"].iloc[0] == 0.58  # the paper's Mass ft 100 % AP (VinDr-pretrained)
        assert ours["mammoclip mean"].iloc[0] == pytest.approx(runs[protocol].loc["map50", "value"])
        assert (demo_run / f"results/tables/{protocol}/detections_Mass.png").stat().st_size > 5000
    clean = runs["clean"]
    assert clean.loc["map50", "n_images"] == 160
    assert clean.loc["map50", "value"] >= 0.4 and clean.loc["cpm", "value"] >= 0.5
    assert clean.loc["map50", "value_low"] <= clean.loc["map50", "value"] <= clean.loc["map50", "value_high"]
    assert runs["paper"].loc["map50", "value"] >= 0.4
    assert (demo_run / "results/tables/clean/froc_Mass.png").stat().st_size > 5000


def test_demo_factor_heatmaps_and_localisation_table(demo_run):
    """Mammo-FActOR runs under both protocols: heatmaps of every test image, scores of the 54 test images
    with a mass box and the 36 with a calcification box, and the table beside the paper's values."""
    import numpy as np

    for protocol in ("paper", "clean"):
        run = demo_run / f"results/factor/{protocol}/mammoclip/seed10"
        with np.load(run / "heatmaps.npz") as heat:
            # paper: the 78 test images with a mass or calcification; clean: all 160
            assert heat["heatmaps"].shape == ({"paper": 78, "clean": 160}[protocol], 2, 8, 5)
        metrics = pd.read_csv(run / "metrics.csv").set_index(["label", "metric"])
        assert metrics.loc[("Mass", "pointing_game"), "n_images"] == 54
        assert metrics.loc[("Suspicious_Calcification", "pointing_game"), "n_images"] == 36
        # the chance level: the mass boxes cover 1.0 % of their images
        assert metrics.loc[("Mass", "pointing_random"), "value"] == pytest.approx(0.0098, abs=0.001)
        table = pd.read_csv(demo_run / f"results/tables/{protocol}/localisation.csv").set_index(
            ["label", "metric"]
        )
        assert table.loc[("Mass", "iou_hit@0.25"), "paper mc_enb5"] == 0.45
        assert (
            table.loc[("Mass", "iou_hit@0.25"), "mammoclip mean"]
            == metrics.loc[("Mass", "iou_hit@0.25"), "value"]
        )
        for attribute in ("mass", "suspicious_calcification"):
            assert (demo_run / f"results/tables/{protocol}/heatmaps_{attribute}.png").stat().st_size > 5000


def test_rerun_has_nothing_to_do(demo_run):
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(demo_run),
            "-n",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert "Nothing to be done" in result.stdout
