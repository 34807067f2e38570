"""Inference helpers: input listing, model input normalisation, scores and embedding files."""

import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from mammoclip.inference import (
    PIXEL_MEAN,
    PIXEL_STD,
    InferenceError,
    class_probabilities,
    list_inputs,
    normalise_image,
    normalise_prompt,
    read_embeddings,
    read_model_input,
    read_prompts,
    score_table,
    write_embeddings,
)


def _png(path, value_range=(10, 200), shape=(40, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.linspace(*value_range, num=shape[0] * shape[1]).reshape(shape).astype(np.uint8)
    cv2.imwrite(str(path), image)
    return image


def test_folder_listing_keeps_dotted_ids(tmp_path):
    _png(tmp_path / "p1" / "1.2.840.5.png")
    _png(tmp_path / "p2" / "abc.png")
    (tmp_path / "notes.txt").write_text("x")
    table = list_inputs(tmp_path)
    assert table["image_id"].tolist() == ["1.2.840.5", "abc"]
    assert table["path"].tolist() == [str(tmp_path / "p1/1.2.840.5.png"), str(tmp_path / "p2/abc.png")]


def test_manifest_listing_skips_failed_rows(tmp_path, caplog):
    _png(tmp_path / "png" / "a.png")
    manifest = pd.DataFrame(
        {"image_id": ["a", "b"], "png_path": ["png/a.png", "png/b.png"], "status": ["ok", "failed"]}
    )
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    table = list_inputs(tmp_path / "manifest.csv")
    assert table["image_id"].tolist() == ["a"]
    assert table["path"].tolist() == [str(tmp_path / "png/a.png")]
    assert "left out 1 of 2 images" in caplog.text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "no images found"),
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d / "nothing", "no such file or folder"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, make, message):
    with pytest.raises(InferenceError, match=message):
        list_inputs(make(tmp_path))


def test_csv_without_path_column(tmp_path):
    pd.DataFrame({"image_id": ["a"], "file": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InferenceError, match="needs a 'path', 'png_path' or 'image_path' column"):
        list_inputs(tmp_path / "t.csv")


def test_model_input_is_minmax_then_standardised(tmp_path):
    image = _png(tmp_path / "a.png", value_range=(10, 200))
    x = read_model_input(tmp_path / "a.png", height=40, width=24)
    assert x.shape == (3, 40, 24) and x.dtype == np.float32
    expected = ((image.astype(np.float32) - 10) / 190 - PIXEL_MEAN) / PIXEL_STD
    np.testing.assert_allclose(x[0], expected, rtol=1e-6)
    assert np.array_equal(x[0], x[2])
    assert x.min() == pytest.approx(-PIXEL_MEAN / PIXEL_STD) and x.max() == pytest.approx(
        (1 - PIXEL_MEAN) / PIXEL_STD
    )
    resized = read_model_input(tmp_path / "a.png", height=20, width=12)
    assert resized.shape == (3, 20, 12)


def test_unreadable_and_constant_images(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InferenceError, match="bad.png: not a readable PNG"):
        read_model_input(tmp_path / "bad.png", height=8, width=8)
    with pytest.raises(InferenceError, match="constant image"):
        normalise_image(np.full((8, 8), 7, np.uint8), source="c.png")


def test_dicom_input_goes_through_preprocessing(tmp_path):
    from mammoclip.phantoms import generate_vindr

    truth = generate_vindr(tmp_path / "vindr", n_studies=1, image_scale=0.05, seed=1)
    x = read_model_input(tmp_path / "vindr" / truth.loc[0, "dicom_path"], height=64, width=40)
    assert x.shape == (3, 64, 40) and np.isfinite(x).all() and x.std() > 0.1
    (tmp_path / "broken.dcm").write_text("text")
    with pytest.raises(InferenceError, match="broken.dcm: not_dicom"):
        read_model_input(tmp_path / "broken.dcm", height=64, width=40)


def test_prompts_are_normalised_like_training_text():
    assert normalise_prompt("No Mass.") == "no mass"
    assert (
        normalise_prompt("Suspicious calcification, left breast.") == "suspicious calcification , left breast"
    )


def test_class_probabilities_use_the_learned_scale():
    images = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = math.log(10.0)
    p = class_probabilities(images, classes, scale)
    expected0 = np.exp([10.0, 0.0]) / np.exp([10.0, 0.0]).sum()
    expected1 = np.exp([6.0, 8.0]) / np.exp([6.0, 8.0]).sum()
    np.testing.assert_allclose(p, [expected0, expected1], rtol=1e-6)


def test_score_table_layout():
    table = score_table(["b", "a"], np.array([[0.2, 0.8], [0.9, 0.1]]), ["no mass", "mass"], task="mass")
    assert list(table.columns) == ["image_id", "task", "class", "probability", "predicted"]
    assert table[["image_id", "class"]].values.tolist() == [
        ["a", "no mass"],
        ["a", "mass"],
        ["b", "no mass"],
        ["b", "mass"],
    ]
    assert table["predicted"].tolist() == [True, False, False, True]
    assert table["probability"].tolist() == [0.9, 0.1, 0.2, 0.8]


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_embeddings_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    raw, projected = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    path = tmp_path / f"e{suffix}"
    write_embeddings(path, ["x", "1.2.3", "z"], raw, projected, {"checkpoint": "m.tar", "seed": 1})
    ids, raw2, projected2, meta = read_embeddings(path)
    assert ids == ["x", "1.2.3", "z"] and meta == {"checkpoint": "m.tar", "seed": 1}
    np.testing.assert_array_equal(raw2, raw)
    np.testing.assert_array_equal(projected2, projected)
    with pytest.raises(InferenceError, match=".parquet or .npz"):
        write_embeddings(tmp_path / "e.h5", ["x"], raw[:1], projected[:1], {})


def test_prompt_files(tmp_path):
    one = tmp_path / "mass.yaml"
    one.write_text("absent: no mass\npresent: [mass, a mass is seen]\n")
    assert read_prompts(one) == {"mass": {"absent": ["no mass"], "present": ["mass", "a mass is seen"]}}
    many = tmp_path / "tasks.json"
    many.write_text('{"mass": {"no": ["no mass"], "yes": ["mass"]}, "calc": {"no": ["x"], "yes": ["y"]}}')
    assert list(read_prompts(many)) == ["mass", "calc"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("mass: {only: [one]}\n")
    with pytest.raises(InferenceError, match="needs at least two classes"):
        read_prompts(bad)
