"""mammoclip.stages.detect / detection_table on tiny synthetic data: PNGs with one bright square per positive
image, a box table in PNG pixels (with a box outside the crop and a box of the other label), and the tiny
CLIP checkpoint of tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mammoclip import stages
from mammoclip.annotations.tables import write_table
from mammoclip.runs import RunKey

HEIGHT, WIDTH, SIDE = 64, 48, 14
N_PATIENTS, N_TEST = 16, 4
#: detector settings for 64 x 48 inputs: small anchors, a few epochs, no augmentation
SETTINGS = {
    "epochs": 3,
    "batch_size": 4,
    "lr": 1.0e-3,
    "input_height": HEIGHT,
    "input_width": WIDTH,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "augment": {"hflip_p": 0.0, "vflip_p": 0.0, "affine_p": 0.0},
}


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """16 patients x 2 images (4 test patients; val_fold = patient % 3 in training); the first image of
    every patient has a Mass square, every third patient's second image a calcification box; patient 1's
    Mass has a second box without a PNG box (outside the crop)."""
    root = tmp_path_factory.mktemp("detect")
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for p in range(N_PATIENTS):
        test = p < N_TEST
        for i in range(2):
            image_id = f"P{p:02d}_{i}.png"
            pixels = rng.integers(0, 40, size=(HEIGHT, WIDTH), dtype=np.uint8)
            path = root / "png" / f"P{p:02d}" / image_id
            path.parent.mkdir(parents=True, exist_ok=True)
            base = {"patient_id": f"P{p:02d}", "image_id": image_id, "split": "test" if test else "training"}
            if i == 0:
                x0, y0 = int(rng.integers(2, WIDTH - SIDE - 2)), int(rng.integers(2, HEIGHT - SIDE - 2))
                pixels[y0 : y0 + SIDE, x0 : x0 + SIDE] = 230
                boxes.append({**base, "finding_categories": ["Mass"], **_box(x0, y0, x0 + SIDE, y0 + SIDE)})
                if p == 1:
                    boxes.append({**base, "finding_categories": ["Mass"], **_box(*[np.nan] * 4)})
            elif p % 3 == 0:
                boxes.append({**base, "finding_categories": ["Suspicious Calcification"], **_box(5, 5, 9, 9)})
            cv2.imwrite(str(path), pixels)
            images.append(
                {
                    **base,
                    "Mass": int(i == 0),
                    "png_path": str(path),
                    "val_fold": -1 if test else p % 3,
                }
            )
    write_table(pd.DataFrame(images), root / "vindr_images.csv")
    write_table(pd.DataFrame(boxes), root / "vindr_boxes.csv")
    return {"root": root, "images": root / "vindr_images.csv", "boxes": root / "vindr_boxes.csv"}


def _box(x0, y0, x1, y1) -> dict[str, float]:
    return {"resized_xmin": x0, "resized_ymin": y0, "resized_xmax": x1, "resized_ymax": y1}


def _outputs(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"metrics": "csv", "detections": "csv", "history": "csv", "model": "pt", "provenance": "json"}
    return {name: str(folder / f"{name}.{ext}") for name, ext in names.items()}


def _run(tables, checkpoint, protocol, folder, *, mode="ft"):
    key = RunKey(protocol, "vindr", "Mass", "tiny-clip", mode, 1.0, 0, 10)
    outputs = _outputs(folder)
    metrics = stages.detect(
        key=key,
        settings=SETTINGS,
        checkpoint=str(checkpoint),
        images=tables["images"],
        boxes=tables["boxes"],
        outputs=outputs,
        n_boot=20,
        paper_model="mc_enb5",
        device="cpu",
        threads=1,
    )
    return metrics, outputs


@pytest.fixture(scope="module")
def runs(tables, tiny_clip_checkpoint, tmp_path_factory) -> dict[str, tuple[pd.DataFrame, dict[str, str]]]:
    root = tmp_path_factory.mktemp("runs")
    return {p: _run(tables, tiny_clip_checkpoint, p, root / p) for p in ("paper", "clean")}


def test_truths_exclude_boxes_outside_the_crop_and_other_labels(tables):
    image_table, truths, counts = stages.detection_truths(tables["images"], tables["boxes"], label="Mass")
    assert len(truths) == N_PATIENTS and set(truths["image_id"]) == {f"P{p:02d}_0.png" for p in range(16)}
    assert counts["boxes"] == N_PATIENTS + 1 and counts["boxes_outside_crop"] == 1
    assert counts["boxes_used"] == N_PATIENTS and counts["labelled_images_without_box"] == 0
    assert list(truths.columns) == ["image_id", "patient_id", "xmin", "ymin", "xmax", "ymax"]
    assert (image_table["Mass"] == image_table["image_id"].str.endswith("_0.png")).all()
    _, calcs, _ = stages.detection_truths(tables["images"], tables["boxes"], label="Suspicious_Calcification")
    assert len(calcs) == 6 and (calcs["xmax"] == 9).all()
    with pytest.raises(ValueError, match="no detection category"):
        stages.detection_truths(tables["images"], tables["boxes"], label="density")


def test_detect_writes_every_output_with_the_run_key(runs):
    for protocol, (metrics, outputs) in runs.items():
        expected = {"map50"} | ({"cpm"} | {f"sensitivity_at_{r:g}" for r in (0.125, 0.25, 0.5, 1, 2, 4)})
        assert set(metrics["metric"]) == (expected if protocol == "clean" else {"map50"})
        written = pd.read_csv(outputs["metrics"], dtype={"model": str})
        assert len(written) == len(metrics)
        row = written.set_index("metric").loc["map50"]
        assert (row.dataset, row.label, row.setting, row.data_frac, row.model) == (
            "vindr",
            "Mass",
            "ft",
            1.0,
            "tiny-clip",
        )
        assert (row.protocol, row.fold, row.seed, row.paper_model) == (protocol, 0, 10, "mc_enb5")
        assert row.checkpoint.endswith("tiny-clip.tar") and row.code_version.startswith("0.1.0+")
        assert 0.0 <= row.value <= 1.0
        # paper: positive test images only; clean: every test image
        assert row.n_images == (N_TEST if protocol == "paper" else 2 * N_TEST) and row.n_boxes == N_TEST
        assert row.score_threshold == (0.2 if protocol == "paper" else 0.05)
        detections = pd.read_csv(outputs["detections"], dtype={"image_id": str, "patient_id": str})
        assert list(detections.columns) == ["image_id", "patient_id", "score", "xmin", "ymin", "xmax", "ymax"]
        assert detections["patient_id"].isin([f"P{p:02d}" for p in range(N_TEST)]).all()
        assert (detections["score"] >= row.score_threshold).all()
        assert (detections["xmin"] >= 0).all() and (detections["xmax"] <= WIDTH + 1e-3).all()
        assert (detections["ymin"] >= 0).all() and (detections["ymax"] <= HEIGHT + 1e-3).all()
        history = pd.read_csv(outputs["history"])
        assert len(history) == SETTINGS["epochs"]
        record = json.loads(Path(outputs["provenance"]).read_text())
        assert record["protocol"] == protocol and record["boxes"]["boxes_outside_crop"] == 1
        n_train = 2 * (N_PATIENTS - N_TEST) - 8 if protocol == "clean" else N_PATIENTS - N_TEST
        assert record["n_images"]["train"] == n_train  # clean: val fold 0 = patients 6, 9, 12, 15 held out
        assert Path(outputs["model"]).stat().st_size > 0


def test_detect_is_deterministic(runs, tables, tiny_clip_checkpoint, tmp_path):
    _, first = runs["clean"]
    _, again = _run(tables, tiny_clip_checkpoint, "clean", tmp_path / "again")
    for name in ("metrics", "detections", "history", "model"):
        if name == "metrics":  # the code version may differ between the runs (a dirty tree)
            a, b = (pd.read_csv(p).drop(columns="code_version") for p in (first[name], again[name]))
            pd.testing.assert_frame_equal(a, b)
        else:
            assert Path(first[name]).read_bytes() == Path(again[name]).read_bytes(), name


def test_detect_refuses_a_classifier_mode(tables, tiny_clip_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="detector mode"):
        _run(tables, tiny_clip_checkpoint, "clean", tmp_path, mode="lp")


def test_detection_table_writes_table_froc_plots_and_panels(runs, tables, tmp_path):
    root = Path(__file__).resolve().parent.parent
    for protocol, (_, outputs) in runs.items():
        out = tmp_path / protocol
        out.mkdir()
        table = stages.detection_table(
            metrics=[outputs["metrics"]],
            detections=[outputs["detections"]],
            images=tables["images"],
            boxes=tables["boxes"],
            paper_results=root / "config" / "paper-results.csv",
            protocol=protocol,
            markdown=out / "detection.md",
            csv=out / "detection.csv",
            froc_plots=[out / "froc_Mass.png"],
            panels=[out / "detections_Mass.png"],
            paper_model="mc_enb5",
        )
        assert set(table["protocol"]) == {protocol}
        markdown = (out / "detection.md").read_text()
        assert f"{protocol} protocol" in markdown and "Mass" in markdown
        written = pd.read_csv(out / "detection.csv")
        assert "map50" in set(written["metric"]) and ("cpm" in set(written["metric"])) == (
            protocol == "clean"
        )
        for name in ("froc_Mass.png", "detections_Mass.png"):
            png = cv2.imread(str(out / name))
            assert png is not None and png.shape[0] > 100, name


def test_detection_table_refuses_mismatched_files(runs, tables, tmp_path):
    (_, paper), (_, clean) = runs["paper"], runs["clean"]
    with pytest.raises(ValueError, match="same runs"):
        stages.detection_table(
            metrics=[paper["metrics"]],
            detections=[clean["detections"]],
            images=tables["images"],
            boxes=tables["boxes"],
            paper_results=Path(__file__).resolve().parent.parent / "config" / "paper-results.csv",
            protocol="paper",
            markdown=tmp_path / "detection.md",
            csv=tmp_path / "detection.csv",
            froc_plots=[],
            panels=[],
            paper_model="mc_enb5",
        )
