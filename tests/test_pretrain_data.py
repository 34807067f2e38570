"""Pre-training data: view sampling, texts, VinDr label text, transforms, normalisation, collate, splits."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from mammoclip.annotations.vindr import FINDING_CATEGORIES, NO_FINDING, finding_slots
from mammoclip.data.clip_data import (
    DEFAULT_PROMPTS,
    ImageTextDataset,
    PretrainDataError,
    PromptsError,
    VindrLabelDataset,
    build_pretraining_datasets,
    generate_report,
    load_prompts,
    make_collate,
    set_epoch,
    text_id,
)
from mammoclip.data.transforms import (
    AffineParams,
    EvalTransform,
    TrainAugment,
    affine_matrix,
    elastic_displacement,
)
from mammoclip.inference import PIXEL_MEAN, PIXEL_STD, InferenceError

H, W = 32, 20  # model input size of these tests; the PNGs are 40 x 24, so every load resizes
PROMPTS = load_prompts()
Z_4SIGMA = 4.0  # binomial bounds: |k - n p| <= 4 sqrt(n p (1 - p)) (fails by chance with p ~ 6e-5)


def within_binomial(k: int, n: int, p: float = 0.5) -> bool:
    return abs(k - n * p) <= Z_4SIGMA * math.sqrt(n * p * (1 - p))


def write_png(folder: Path, name: str, *, value: int | None = None, seed: int = 0) -> Path:
    """A 40 x 24 grey PNG: a gradient plus noise (min 0, max 255), or constant ``value``."""
    if value is None:
        rng = np.random.default_rng(seed)
        base = np.add.outer(np.arange(40.0), np.arange(24.0)) * 4 + rng.uniform(0, 30, (40, 24))
        image = np.clip(base / base.max() * 255, 0, 255).astype(np.uint8)
        image[0, 0], image[-1, -1] = 0, 255
    else:
        image = np.full((40, 24), value, dtype=np.uint8)
    path = folder / name
    assert cv2.imwrite(str(path), image)
    return path


# ------------------------------------------------------------------------------------------ fixtures

BREASTS = {
    # key: (CC, MLO, image list incl. other views, texts, back-translations)
    "A": (["a_cc1.png", "a_cc2.png"], ["a_mlo.png"], None, ["a findings text", "a impression text"]),
    "B": (["b_cc1.png", "b_cc2.png"], [], None, ["b findings text", "b impression text"]),
    "C": (["c_cc.png"], [], None, ["c single section"]),
    "D": (["d_cc.png"], [], ["d_cc.png", "d_ml.png"], ["d findings text", "d impression text"]),
    "E": ([], [], ["e_at1.png", "e_at2.png"], ["e findings text", "e impression text"]),
}


@pytest.fixture(scope="module")
def report_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("png")
    rows, png_paths = [], {}
    for k, (patient, (cc, mlo, image, texts)) in enumerate(BREASTS.items()):
        image = image if image is not None else cc + mlo
        for j, name in enumerate(image):
            png_paths[name] = str(write_png(folder, name, seed=10 * k + j))
        rows.append(
            {
                "patient_id": patient,
                "laterality": "L",
                "image": image,
                "view": ["CC", "MLO"],
                "CC": cc,
                "MLO": mlo,
                "text": texts,
                "findings": texts[0],
                "impressions": texts[-1],
                "text_augment": [f"back translated {t}" for t in texts],
                "fold": k % 2,
            }
        )
    return pd.DataFrame(rows), png_paths, folder


def report_ds(report_setup, *, train=True, seed=0, **kwargs):
    table, png_paths, _ = report_setup
    kwargs.setdefault("augment", False)
    return ImageTextDataset(table, png_paths, height=H, width=W, train=train, seed=seed, **kwargs)


def picks(ds, index, seeds):
    out = []
    for seed in seeds:
        first, second = ds.pick_images(index, np.random.default_rng(seed))
        out.append(((first.name, first.view), (second.name, second.view)))
    return out


# --------------------------------------------------------------------------------------- view sampling


def test_cc_and_mlo_breast_training_picks_one_of_each_in_varying_order(report_setup):
    ds = report_ds(report_setup)
    drawn = picks(ds, 0, range(200))
    assert all({a[1], b[1]} == {"CC", "MLO"} for a, b in drawn)
    cc_first = sum(a[1] == "CC" for a, _ in drawn)
    assert within_binomial(cc_first, 200)  # order random
    assert {n for pair in drawn for n, v in pair if v == "CC"} == {"a_cc1.png", "a_cc2.png"}
    assert {n for pair in drawn for n, v in pair if v == "MLO"} == {"a_mlo.png"}
    # through __getitem__: the seed (and the epoch) change the order
    orders = set()
    for seed in range(12):
        item = report_ds(report_setup, seed=seed)[0]
        assert {item["view"], item["view2"]} == {"CC", "MLO"}
        orders.add(item["view"])
    assert orders == {"CC", "MLO"}


def test_two_cc_no_mlo_gives_two_distinct_cc_images(report_setup):
    ds = report_ds(report_setup)
    drawn = picks(ds, 1, range(100))
    assert all(a[0] != b[0] and a[1] == b[1] == "CC" for a, b in drawn)
    assert within_binomial(sum(a[0] == "b_cc1.png" for a, _ in drawn), 100)


def test_single_image_is_used_twice_and_augmented_independently(report_setup):
    table, png_paths, _ = report_setup
    ds = ImageTextDataset(table, png_paths, height=H, width=W, train=True, seed=3, augment=True)
    for seed in range(20):
        first, second = ds.pick_images(2, np.random.default_rng(seed))
        assert first.name == second.name == "c_cc.png"
    items = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        items.append(ds[2])
    assert all(it["image_name"] == it["image2_name"] == "c_cc.png" for it in items)
    # the two slots hold the same image but differ by augmentation
    assert any(not torch.equal(it["image"], it["image2"]) for it in items)


def test_other_view_stands_in_for_the_missing_view(report_setup):
    ds = report_ds(report_setup)
    drawn = picks(ds, 3, range(50))  # D: one CC + an ML image
    assert all(sorted([a, b]) == [("d_cc.png", "CC"), ("d_ml.png", "other")] for a, b in drawn)
    assert 0 < sum(a[1] == "CC" for a, _ in drawn) < 50
    drawn = picks(ds, 4, range(50))  # E: only AT images -> two distinct of them
    assert all(a[0] != b[0] and a[1] == b[1] == "other" for a, b in drawn)
    assert ds.pick_images(3) == ds.pick_images(3)  # validation choice: CC first, stand-in second
    assert [i.name for i in ds.pick_images(3)] == ["d_cc.png", "d_ml.png"]


def test_validation_is_deterministic_and_unaugmented(report_setup):
    names = {}
    for seed in (0, 1, 7):
        ds = report_ds(report_setup, train=False, seed=seed, augment=True)
        assert isinstance(ds.transform, EvalTransform)
        for epoch in (0, 5):
            ds.set_epoch(epoch)
            for index in range(len(ds)):
                item = ds[index]
                again = ds[index]
                assert torch.equal(item["image"], again["image"]) and item["text"] == again["text"]
                names.setdefault(index, set()).add(
                    (item["image_name"], item["image2_name"], item["text"], item["text2"])
                )
    assert all(len(v) == 1 for v in names.values())
    got = {i: next(iter(v)) for i, v in names.items()}
    assert got[0] == ("a_cc1.png", "a_mlo.png", "a findings text", "a impression text")
    assert got[1] == ("b_cc1.png", "b_cc2.png", "b findings text", "b impression text")
    assert got[2] == ("c_cc.png", "c_cc.png", "c single section", "c single section")
    assert got[4][:2] == ("e_at1.png", "e_at2.png")


def test_training_items_are_reproducible_and_change_with_epoch(report_setup):
    table, png_paths, _ = report_setup
    ds1 = ImageTextDataset(table, png_paths, height=H, width=W, train=True, seed=5, augment=True)
    ds2 = ImageTextDataset(table, png_paths, height=H, width=W, train=True, seed=5, augment=True)
    a, b = ds1[0], ds2[0]
    assert torch.equal(a["image"], b["image"]) and a["text"] == b["text"] and a["view"] == b["view"]
    ds1.set_epoch(1)
    assert not torch.equal(ds1[0]["image"], a["image"])
    pickle.loads(pickle.dumps(ds1))  # DataLoader workers


# ------------------------------------------------------------------------------------------ texts


def test_text_draws_and_back_translation_rate(report_setup):
    ds = report_ds(report_setup)
    n = 1200
    replaced = same_section = 0
    seen = set()
    for epoch in range(n):
        ds.set_epoch(epoch)
        item = ds[0]
        for text in (item["text"], item["text2"]):
            assert text in {"a findings text", "a impression text"} | {
                "back translated a findings text",
                "back translated a impression text",
            }
            replaced += text.startswith("back translated ")
            seen.add(text)
        same_section += item["text"].removeprefix("back translated ") == item["text2"].removeprefix(
            "back translated "
        )
    assert len(seen) == 4
    assert within_binomial(replaced, 2 * n)  # each draw replaced with p = 0.5
    assert within_binomial(same_section, n)  # draws with replacement from 2 sections


def test_single_section_gives_one_original_and_one_back_translation(report_setup):
    ds = report_ds(report_setup)
    first_original = 0
    for epoch in range(400):
        ds.set_epoch(epoch)
        item = ds[2]
        assert sorted([item["text"], item["text2"]]) == [
            "back translated c single section",
            "c single section",
        ]
        first_original += item["text"] == "c single section"
    assert within_binomial(first_original, 400)


def test_text_aug_prob_zero_and_missing_back_translations(report_setup, caplog):
    ds = report_ds(report_setup, text_aug_prob=0.0)
    for epoch in range(50):
        ds.set_epoch(epoch)
        assert not any(ds[i][k].startswith("back") for i in (0, 2) for k in ("text", "text2"))
    table, png_paths, _ = report_setup
    with caplog.at_level("WARNING"):
        ds = ImageTextDataset(
            table.drop(columns="text_augment"), png_paths, height=H, width=W, train=True, augment=False
        )
    assert "never replaced by back-translations" in caplog.text
    assert ds[2]["text"] == ds[2]["text2"] == "c single section"
    bad = table.copy()
    bad.at[0, "text_augment"] = ["only one"]
    with pytest.raises(PretrainDataError, match=r"row 1 .*'text_augment' has 1 entries but 'text' has 2"):
        ImageTextDataset(bad, png_paths, height=H, width=W, train=True)


# -------------------------------------------------------------------------------------- VinDr text


def sentences_of(text: str, candidates: list[str]) -> list[str]:
    return [s for s in candidates if s in text]


def test_generate_report_validation_mode_is_deterministic_and_side_specific():
    slots = finding_slots(["Mass", "Suspicious Calcification"], "R")
    text = generate_report(slots, "R")
    expected = [PROMPTS["Mass"]["pos_right"][0], PROMPTS["Suspicious Calcification"]["pos_right"][0]] + [
        PROMPTS[c]["neg_right"][0]
        for c in FINDING_CATEGORIES
        if c not in ("Mass", "Suspicious Calcification")
    ]
    assert text == " ".join(expected)
    assert text == generate_report(slots, "R", None)
    assert " left " not in f" {text} "
    left = generate_report(finding_slots(["Mass"], "L"), "L")
    assert left.startswith(PROMPTS["Mass"]["pos_left"][0]) and " right " not in f" {left} "
    # negatives exclude the positives
    assert not any(s in text for s in PROMPTS["Mass"]["neg_right"])
    with pytest.raises(PretrainDataError, match="slots of the left side for a right breast"):
        generate_report(finding_slots(["Mass"], "L"), "R")
    with pytest.raises(PretrainDataError, match="laterality"):
        generate_report(slots, "X")


def test_no_finding_states_every_absence_and_legacy_drops_negatives():
    slots = [[NO_FINDING], [], ["Mass", "Asymmetry"], []]
    absences = [PROMPTS[c]["neg_right"][0] for c in FINDING_CATEGORIES]
    canonical = [PROMPTS[NO_FINDING]["pos_right"][0], *absences]
    assert generate_report(slots, "R") == " ".join(canonical)
    # "no mass" is said of normal breasts too, not only of breasts with another finding
    assert "there is no mass in the right breast" in generate_report(slots, "R")
    for seed in range(50):
        text = generate_report(slots, "R", np.random.default_rng(seed))
        assert sentences_of(text, PROMPTS[NO_FINDING]["pos_right"])
        for c in FINDING_CATEGORIES:
            assert sentences_of(text, PROMPTS[c]["neg_right"]), (c, text)
    # upstream: a normal breast gets its "no finding" sentence only
    legacy = dict(normal_states_absences=False)
    assert generate_report(slots, "R", **legacy) == PROMPTS[NO_FINDING]["pos_right"][0]
    variants = {generate_report(slots, "R", np.random.default_rng(s), **legacy) for s in range(200)}
    assert variants == set(PROMPTS[NO_FINDING]["pos_right"])


def test_training_draws_random_variants():
    # training: each label contributes exactly one of its variants, in shuffled order
    slots = finding_slots(["Mass", "Skin Thickening"], "L")
    orders, mass_variants = set(), set()
    for seed in range(100):
        text = generate_report(slots, "L", np.random.default_rng(seed))
        found = sentences_of(text, PROMPTS["Mass"]["pos_left"])
        assert len(found) >= 1
        mass_variants.add(max(found, key=len))
        for c in FINDING_CATEGORIES:
            kind = "pos_left" if c in ("Mass", "Skin Thickening") else "neg_left"
            assert sentences_of(text, PROMPTS[c][kind]), (c, text)
        orders.add(text.index(max(found, key=len)))
    assert len(mass_variants) > 1 and len(orders) > 1
    # duplicated labels give one sentence
    assert generate_report([["Mass", "Mass"], [], [], []], "R") == PROMPTS["Mass"]["pos_right"][0]


@pytest.fixture(scope="module")
def vindr_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vindr_png")
    rows, png_paths = [], {}
    specs = [  # patient, laterality, split, val_fold, CC images, MLO images, CC labels, MLO labels
        ("p1", "R", "training", 0, ["p1r_cc"], ["p1r_mlo"], ["Mass"], []),
        ("p2", "L", "training", 1, ["p2l_cc"], ["p2l_mlo"], [], []),
        ("p3", "L", "training", 1, ["p3l_cc1", "p3l_cc2"], [], ["Asymmetry"], []),
        ("p4", "R", "test", -1, ["p4r_cc"], ["p4r_mlo"], ["Mass"], ["Mass"]),
    ]
    for k, (patient, lat, split, fold, cc, mlo, cc_lab, mlo_lab) in enumerate(specs):
        for j, image_id in enumerate(cc + mlo):
            png_paths[image_id] = str(write_png(folder, f"{image_id}.png", seed=100 + 10 * k + j))
        rows.append(
            {
                "patient_id": patient,
                "laterality": lat,
                "split": split,
                "image": [f"{i}.png" for i in cc + mlo],
                "view": ["CC"] * len(cc) + ["MLO"] * len(mlo),
                "CC": [f"{i}.png" for i in cc],
                "MLO": [f"{i}.png" for i in mlo],
                "cc_findings": [cc_lab] * len(cc),
                "mlo_findings": [mlo_lab] * len(mlo),
                "CC_FINDING": finding_slots(cc_lab, lat, has_images=bool(cc)),
                "MLO_FINDING": finding_slots(mlo_lab, lat, has_images=bool(mlo)),
                "fold": 0 if split == "test" else 1,
                "patient_id_laterality": f"{patient}_{lat}",
                "val_fold": fold,
            }
        )
    return pd.DataFrame(rows), png_paths  # png_paths keyed by image id (no .png suffix)


def test_vindr_texts_follow_the_view_of_each_image(vindr_setup):
    table, png_paths = vindr_setup
    ds = VindrLabelDataset(table, png_paths, height=H, width=W, train=True, augment=False, prompts=PROMPTS)
    mass_pos = PROMPTS["Mass"]["pos_right"]
    normal = PROMPTS[NO_FINDING]["pos_right"]
    views = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        item = ds[0]
        views.add(item["view"])
        texts = {item["view"]: item["text"], item["view2"]: item["text2"]}
        assert sentences_of(texts["CC"], mass_pos) and not sentences_of(
            texts["CC"], PROMPTS["Mass"]["neg_right"]
        )
        # No Finding: every absence stated
        assert sentences_of(texts["MLO"], normal) and sentences_of(texts["MLO"], PROMPTS["Mass"]["neg_right"])
    assert views == {"CC", "MLO"}
    # single-view breast: both texts from that view
    item = ds[2]
    assert item["view"] == item["view2"] == "CC" and item["image_name"] != item["image2_name"]
    assert sentences_of(item["text"], PROMPTS["Asymmetry"]["pos_left"])
    assert sentences_of(item["text2"], PROMPTS["Asymmetry"]["pos_left"])
    # validation: deterministic, first variants, CC first
    val = VindrLabelDataset(table, png_paths, height=H, width=W, train=False, prompts=PROMPTS)
    first, again = val[0], val[0]
    assert (first["text"], first["text2"]) == (again["text"], again["text2"])
    assert first["view"] == "CC" and first["text"] == generate_report(table.at[0, "CC_FINDING"], "R")
    assert first["text2"] == generate_report(table.at[0, "MLO_FINDING"], "R")
    assert first["text2"].startswith(normal[0] + " " + PROMPTS["Mass"]["neg_right"][0])
    legacy = VindrLabelDataset(
        table, png_paths, height=H, width=W, train=False, prompts=PROMPTS, normal_states_absences=False
    )
    assert legacy[0]["text2"] == normal[0]


def test_vindr_unknown_label_is_reported_with_its_row(vindr_setup):
    table, png_paths = vindr_setup
    bad = table.copy()
    bad.at[1, "CC_FINDING"] = [[], ["Calcified Unicorn"], [], []]
    with pytest.raises(PretrainDataError, match=r"row 2 .*CC_FINDING.*Calcified Unicorn"):
        VindrLabelDataset(bad, png_paths, height=H, width=W, train=False, prompts=PROMPTS)


# ---------------------------------------------------------------------------------------- prompts


def test_shipped_prompts_are_complete_and_in_report_style():
    assert set(PROMPTS) == {*FINDING_CATEGORIES, NO_FINDING}
    for category, entry in PROMPTS.items():
        keys = (
            {"pos_right", "pos_left"}
            if category == NO_FINDING
            else {"pos_right", "pos_left", "neg_right", "neg_left"}
        )
        assert set(entry) == keys
        for key, sentences in entry.items():
            assert len(sentences) >= 4
            side = key.split("_")[1]
            assert all(s == s.lower() and "." not in s and side in s.split() for s in sentences)


MASS_R = "there is a mass in the right breast"
PROMPT_EDITS = {
    "unknown-category": (
        lambda t: t.replace('"Skin Thickening":', '"Skin Thickenin":', 1),
        r"unknown category \['Skin Thickenin'\]",
    ),
    "wrong-side": (
        lambda t: t.replace(MASS_R, "there is a mass in the left breast", 1),
        r"'Mass', key 'pos_right'.*must name the right side",
    ),
    "period": (lambda t: t.replace(MASS_R, MASS_R + ".", 1), r"'Mass', key 'pos_right'.*a period"),
    "upper-case": (lambda t: t.replace(MASS_R, "There is a mass in the right breast", 1), r"upper-case"),
    "punctuation": (lambda t: t.replace(MASS_R, "there is a mass, in the right breast", 1), r"word-punct"),
}


@pytest.mark.parametrize("case", list(PROMPT_EDITS))
def test_prompts_validation_names_the_problem(tmp_path, case):
    edit, message = PROMPT_EDITS[case]
    text = DEFAULT_PROMPTS.read_text()
    path = tmp_path / "prompts.yaml"
    path.write_text(edit(text))
    with pytest.raises(PromptsError, match=message) as info:
        load_prompts(path)
    assert str(path) in str(info.value)


def test_prompts_missing_key_and_category(tmp_path):
    import yaml

    data = yaml.safe_load(DEFAULT_PROMPTS.read_text())
    del data["Mass"]["neg_left"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PromptsError, match=r"p\.yaml: category 'Mass': missing key 'neg_left'"):
        load_prompts(path)
    data = yaml.safe_load(DEFAULT_PROMPTS.read_text())
    del data["Skin Retraction"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PromptsError, match=r"missing category 'Skin Retraction'"):
        load_prompts(path)
    data = yaml.safe_load(DEFAULT_PROMPTS.read_text())
    data[NO_FINDING]["neg_right"] = ["no finding in the right breast"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PromptsError, match="never a negative"):
        load_prompts(path)
    data = yaml.safe_load(DEFAULT_PROMPTS.read_text())
    data["Mass"]["pos_left"] = []
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PromptsError, match=r"'Mass', key 'pos_left': expected a non-empty list"):
        load_prompts(path)


# ------------------------------------------------------------------------------------- transforms


def grey(h=40, w=24, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def test_transform_shapes_dtypes_and_resize():
    image = grey()
    out = TrainAugment(H, W)(image, np.random.default_rng(0))
    assert out.shape == (H, W) and out.dtype == np.uint8
    resized = EvalTransform(H, W)(image)
    assert np.array_equal(resized, cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA))
    same = grey(H, W)
    assert EvalTransform(H, W)(same) is same
    with pytest.raises(ValueError, match="grey uint8"):
        EvalTransform(H, W)(image.astype(np.float32))
    with pytest.raises(TypeError, match="Generator"):
        TrainAugment(H, W)(image, 0)


def test_random_affine_ranges_vary_and_legacy_is_fixed():
    rng = np.random.default_rng(0)
    random_aug = TrainAugment(H, W, affine_p=1.0)
    params = [random_aug.sample(rng).affine for _ in range(300)]
    assert params[0] != params[1]
    rot = np.array([p.rotate for p in params])
    assert rot.min() < -15 and rot.max() > 15 and np.abs(rot).max() <= 20
    for name, bound in (("shear_x", 20), ("shear_y", 20), ("translate_x", 0.1), ("translate_y", 0.1)):
        values = np.array([getattr(p, name) for p in params])
        assert values.min() < -0.7 * bound and values.max() > 0.7 * bound and np.abs(values).max() <= bound
    legacy = TrainAugment(H, W, legacy=True, affine_p=1.0)
    lparams = [legacy.sample(rng).affine for _ in range(100)]
    for p in lparams:
        assert (p.rotate, p.shear_x, p.shear_y, p.translate_x, p.translate_y) == (20, 20, 20, 0.1, 0.1)
        assert 0.8 <= p.scale_x <= 1.2 and 0.8 <= p.scale_y <= 1.2
    assert len({p.scale_x for p in lparams}) == 100 and any(p.scale_x != p.scale_y for p in lparams)
    # both modes fire each step with p = 0.5
    draws = [TrainAugment(H, W).sample(rng) for _ in range(400)]
    for step in ("hflip", "vflip"):
        assert within_binomial(sum(getattr(d, step) for d in draws), 400)
    assert within_binomial(sum(d.affine is not None for d in draws), 400)
    assert within_binomial(sum(d.elastic_seed is not None for d in draws), 400)


def centroid(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(image > 0)
    weights = image[ys, xs].astype(float)
    return float((xs * weights).sum() / weights.sum()), float((ys * weights).sum() / weights.sum())


def test_legacy_affine_rotates_a_marker_by_plus_20_degrees_and_shifts_by_10_percent():
    size = 201
    centre = (size - 1) / 2
    image = np.zeros((size, size), dtype=np.uint8)
    image[99:102, 139:142] = 255  # marker 40 px right of the centre
    image[99:102, 99:102] = 255  # and one at the centre
    aug = TrainAugment(
        size, size, legacy=True, hflip_p=0, vflip_p=0, affine_p=1, elastic_p=0, shear=0, scale=(1.0, 1.0)
    )
    out = aug(image, np.random.default_rng(0))
    shift = 0.1 * size
    xs, ys = np.meshgrid(np.arange(size), np.arange(size))
    # centre marker: moved by +10 % of the size on both axes
    near = np.hypot(xs - centre - shift, ys - centre - shift) < 8
    cx, cy = centroid(np.where(near, out, 0))
    assert cx == pytest.approx(centre + shift, abs=0.3) and cy == pytest.approx(centre + shift, abs=0.3)
    # outer marker: rotated about the (shifted) centre by +20 degrees (clockwise on screen, y down)
    mx, my = centroid(np.where(np.hypot(xs - cx, ys - cy) > 20, out, 0))
    angle = math.degrees(math.atan2(my - cy, mx - cx))
    assert angle == pytest.approx(20.0, abs=0.5)
    assert math.hypot(mx - cx, my - cy) == pytest.approx(40.0, abs=0.5)
    # the matrix says the same
    m = affine_matrix(AffineParams(rotate=20, translate_x=0.1, translate_y=0.1), size, size)
    assert m @ np.array([centre + 40, centre, 1]) == pytest.approx(
        [centre + shift + 40 * math.cos(math.radians(20)), centre + shift + 40 * math.sin(math.radians(20))]
    )


def test_affine_border_is_zero_and_augmentation_is_reproducible():
    image = np.full((H, W), 200, dtype=np.uint8)
    aug = TrainAugment(H, W, legacy=True, affine_p=1.0, elastic_p=0.0)
    out = aug(image, np.random.default_rng(1))
    assert out.min() == 0 and out.max() == 200  # constant zero border
    image = grey(H, W)
    full = TrainAugment(H, W, affine_p=1.0, elastic_p=1.0)
    a = full(image, np.random.default_rng(7))
    assert np.array_equal(a, full(image, np.random.default_rng(7)))
    assert not np.array_equal(a, full(image, np.random.default_rng(8)))


def test_elastic_displacement_has_the_documented_magnitude():
    dx, dy = elastic_displacement(600, 600, alpha=10.0, sigma=15.0, rng=np.random.default_rng(0))
    assert dx.dtype == np.float32 and dx.shape == (600, 600)
    expected = 10.0 * math.sqrt(1 / 3) / (2 * math.sqrt(math.pi) * 15.0)  # ~0.109 px
    assert float(dx.std()) == pytest.approx(expected, rel=0.25)
    assert float(dy.std()) == pytest.approx(expected, rel=0.25)
    assert not np.allclose(dx, dy)


# --------------------------------------------------------------------------------- normalisation


def test_items_are_normalised_with_exact_min_and_max(report_setup):
    expected_min = (np.float32(0.0) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    expected_max = (np.float32(1.0) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    table, png_paths, _ = report_setup
    for train in (True, False):
        ds = ImageTextDataset(table, png_paths, height=H, width=W, train=train, augment=True)
        for index in range(len(ds)):
            item = ds[index]
            for key in ("image", "image2"):
                x = item[key]
                assert x.shape == (3, H, W) and x.dtype == torch.float32
                assert x.min().item() == expected_min and x.max().item() == expected_max
                assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert expected_min == pytest.approx(-1.2330, abs=1e-4) and expected_max == pytest.approx(
        2.7584, abs=1e-4
    )


def test_constant_image_error_names_the_file(report_setup, tmp_path):
    table, png_paths, _ = report_setup
    flat = write_png(tmp_path, "flat.png", value=128)
    paths = {**png_paths, "c_cc.png": str(flat)}
    ds = ImageTextDataset(table, paths, height=H, width=W, train=True, augment=True)
    with pytest.raises(InferenceError, match=rf"{flat}: constant image"):
        ds[2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    ds = ImageTextDataset(table, {**png_paths, "c_cc.png": str(broken)}, height=H, width=W, train=False)
    with pytest.raises(InferenceError, match=rf"{broken}: not a readable PNG"):
        ds[2]


# ------------------------------------------------------------------------------------ exclusion


def test_images_missing_from_png_paths_are_excluded_and_counted(report_setup, caplog):
    table, png_paths, _ = report_setup
    paths = {k: v for k, v in png_paths.items() if k not in ("a_cc2.png", "c_cc.png")}
    with caplog.at_level("INFO", logger="mammoclip.data.clip_data"):
        ds = ImageTextDataset(table, paths, height=H, width=W, train=True, augment=False, name="reports")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "reports (training): excluded 2 of 10 images not in png_paths" in message
    assert "'a_cc2.png', 'c_cc.png'" in message and "dropped 1 of 5 breasts" in message
    assert ds.stats["excluded_images"] == 2 and ds.stats["dropped_breasts_without_image"] == 1
    assert len(ds) == 4 and [b.patient_id for b in ds.breasts] == ["A", "B", "D", "E"]
    assert {n for n, _ in (p[0] for p in picks(ds, 0, range(30)))} <= {"a_cc1.png", "a_mlo.png"}
    caplog.clear()
    with caplog.at_level("INFO", logger="mammoclip.data.clip_data"):
        report_ds(report_setup)
    assert "5 breasts, 10 images, none excluded" in caplog.text


def test_upstream_defect_inputs_do_not_crash(report_setup):
    """None entries (missing views after upstream's reorder), NaN text_augment, list reprs as strings."""
    table, png_paths, _ = report_setup
    odd = table.copy()
    odd.at[0, "image"] = ["a_cc1.png", None, "a_mlo.png"]
    odd.at[0, "CC"] = str(["a_cc1.png", None])
    odd.at[1, "text_augment"] = float("nan")
    ds = ImageTextDataset(odd, png_paths, height=H, width=W, train=True, augment=False)
    assert len(ds) == 5 and ds.stats["sections_without_back_translation"] == 2
    for epoch in range(5):
        ds.set_epoch(epoch)
        assert not ds[1]["text"].startswith("back")


# ------------------------------------------------------------------------------------------ collate


def test_collate_shapes_and_text_ids(report_setup, tiny_bert_dir):
    from mammoclip.models.text_encoders import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    ds = report_ds(report_setup, train=False)
    collate = make_collate(tokenizer, max_length=256)
    pickle.loads(pickle.dumps(collate))
    batch = collate([ds[0], ds[1], ds[2], ds[2]])
    assert set(batch) == {
        "images", "images2", "input_ids", "attention_mask", "input_ids2", "attention_mask2", "text_ids",
        "text2_ids",
    }  # fmt: skip
    assert batch["images"].shape == batch["images2"].shape == (4, 3, H, W)
    assert batch["images"].dtype == torch.float32
    for key in ("input_ids", "attention_mask", "input_ids2", "attention_mask2"):
        assert batch[key].shape == (4, 256) and batch[key].dtype == torch.long
    assert batch["text_ids"].dtype == batch["text2_ids"].dtype == torch.long
    ids = batch["text_ids"].tolist()
    assert ids[2] == ids[3] and len(set(ids[:3])) == 3
    assert batch["text2_ids"][2] == batch["text_ids"][2]  # item 2: same single section in both slots
    assert ids[0] == text_id("a findings text")
    digest = hashlib.blake2b(b"a findings text", digest_size=8).digest()
    assert text_id("a findings text") == int.from_bytes(digest, "big", signed=True)
    short = make_collate(tokenizer, max_length=8)([ds[0]])
    assert short["input_ids"].shape == (1, 8)  # truncation


# --------------------------------------------------------------------------------------------- splits


def test_build_pretraining_datasets_splits(report_setup, vindr_setup, tiny_bert_dir, caplog, tmp_path):
    from mammoclip.annotations.tables import write_table
    from mammoclip.models.text_encoders import load_tokenizer

    report_table, report_paths, _ = report_setup
    vindr_table, vindr_paths = vindr_setup
    # the report table via its CSV (list columns as repr), png_paths keyed by id and by file name
    csv = tmp_path / "reports.csv"
    write_table(report_table, csv)
    with caplog.at_level("INFO", logger="mammoclip.data.clip_data"):
        train, val = build_pretraining_datasets(
            csv, vindr_table, {**report_paths, **vindr_paths}, height=H, width=W, val_fold=1, seed=0
        )
    assert [d.name for d in train.datasets] == [d.name for d in val.datasets] == ["reports", "vindr"]
    reports_train, vindr_train = train.datasets
    reports_val, vindr_val = val.datasets
    assert [b.patient_id for b in reports_train.breasts] == ["A", "C", "E"]  # fold != 1
    assert [b.patient_id for b in reports_val.breasts] == ["B", "D"]
    assert [b.patient_id for b in vindr_train.breasts] == ["p1"]  # training split, val_fold != 1
    assert [b.patient_id for b in vindr_val.breasts] == ["p2", "p3"]  # training split, val_fold == 1
    assert "p4" not in {b.patient_id for d in (*train.datasets, *val.datasets) for b in d.breasts}
    assert "1 breasts of other splits (test) are never used" in caplog.text
    assert reports_train.train and not reports_val.train and isinstance(reports_train.transform, TrainAugment)
    assert not reports_train.transform.legacy
    # a whole epoch through a DataLoader
    loader = DataLoader(
        train, batch_size=2, shuffle=True, collate_fn=make_collate(load_tokenizer(tiny_bert_dir))
    )
    set_epoch(train, 3)
    assert reports_train.epoch == vindr_train.epoch == 3
    batches = list(loader)
    assert sum(b["images"].shape[0] for b in batches) == len(train) == 4
    # separate VinDr fold; bad folds are reported
    train, val = build_pretraining_datasets(
        None, vindr_table, vindr_paths, height=H, width=W, val_fold=0, legacy_augment=True
    )
    assert [b.patient_id for b in val.datasets[0].breasts] == ["p1"] and train.datasets[0].transform.legacy
    with pytest.raises(
        PretrainDataError, match=r"no breast in validation fold 3 \(folds present: \[0, 1\]\)"
    ):
        build_pretraining_datasets(report_table, None, report_paths, height=H, width=W, val_fold=3)
    with pytest.raises(PretrainDataError, match=r"no training-split breast in val_fold 4"):
        build_pretraining_datasets(None, vindr_table, vindr_paths, height=H, width=W, val_fold=4)
    with pytest.raises(PretrainDataError, match="needs a report table, a VinDr table, or both"):
        build_pretraining_datasets(png_paths={}, height=H, width=W)
