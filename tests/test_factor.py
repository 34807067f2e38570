"""Mammo-FActOR: mapper, loss (against a loop reference, with upstream's defects), heatmaps, localisation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammoclip.evaluate.localisation import (
    heatmap_regions,
    heatmap_to_png,
    hit_metric_name,
    image_localisation,
    localisation_metrics,
)
from mammoclip.models.factor import AttributeMapper, image_scores, region_similarities
from mammoclip.train.factor import (
    MapperConfig,
    attribute_sentences,
    mapper_heatmaps,
    mapper_loss,
    train_mapper,
)


def loop_loss(scores: torch.Tensor, targets: torch.Tensor, *, upstream: bool) -> float:
    """The loss written out pair by pair (the module docstring's formula; upstream's denominator sums
    exp(s * (1 - y)) over the whole batch)."""
    losses = []
    b, a = scores.shape
    for k in range(a):
        for i in range(b):
            if not targets[i, k]:
                continue
            s = float(scores[i, k])
            if upstream:
                others = sum(math.exp(float(scores[j, k]) * (1 - float(targets[j, k]))) for j in range(b))
            else:
                others = sum(math.exp(float(scores[j, k])) for j in range(b) if not targets[j, k])
            losses.append(-math.log(math.exp(s) / (math.exp(s) + others)))
    return sum(losses) / len(losses)


SCORES = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-0.5, 0.25], [1.5, 1.0], [0.0, -2.0]])
TARGETS = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [0, 0]])


@pytest.mark.parametrize("upstream", [False, True])
def test_mapper_loss_matches_loop_reference(upstream):
    got = mapper_loss(SCORES, TARGETS, positives_in_denominator=upstream)
    assert float(got) == pytest.approx(loop_loss(SCORES, TARGETS, upstream=upstream), rel=1e-6)


def test_mapper_loss_values_and_defect():
    # fixed: positives (0, mass) and (2, mass) vs negatives 0.5, 1.5, 0.0
    neg = math.exp(0.5) + math.exp(1.5) + math.exp(0.0)
    mass = [-math.log(math.exp(s) / (math.exp(s) + neg)) for s in (2.0, -0.5)]
    neg_c = math.exp(-1.0) + math.exp(1.0) + math.exp(-2.0)
    calc = [-math.log(math.exp(s) / (math.exp(s) + neg_c)) for s in (3.0, 0.25)]
    assert float(mapper_loss(SCORES, TARGETS)) == pytest.approx(np.mean(mass + calc), rel=1e-6)
    # upstream adds exp(0) = 1 per positive of the attribute to the denominator: a larger loss
    assert float(mapper_loss(SCORES, TARGETS, positives_in_denominator=True)) > float(
        mapper_loss(SCORES, TARGETS)
    )
    # no positive: 0 with a zero gradient; large scores do not overflow
    scores = SCORES.clone().requires_grad_(True)
    loss = mapper_loss(scores, torch.zeros_like(TARGETS))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(scores.grad, torch.zeros_like(SCORES))
    assert math.isfinite(float(mapper_loss(SCORES * 1000, TARGETS)))
    with pytest.raises(ValueError, match="must be"):
        mapper_loss(SCORES, TARGETS[:, :1])


def test_mapper_shapes_and_interleaving():
    torch.manual_seed(0)
    fixed = AttributeMapper(6, 4, 2)
    legacy = AttributeMapper(6, 4, 2, interleave_heads=True)
    legacy.load_state_dict(fixed.state_dict())
    maps = torch.randn(3, 4, 2, 3)  # B=3, C=4 channels, 2 x 3
    out, old = fixed(maps), legacy(maps)
    assert out.shape == old.shape == (3, 2, 4, 4)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 2, 4))
    # fixed: attribute a, channel c = head a on channel c
    head1 = torch.nn.functional.normalize(fixed.heads[1](maps.flatten(2)), dim=-1)
    assert torch.allclose(out[:, 1], head1)
    # upstream's interleave: attribute 0 gets channels 0, 2 of head 0 then channels 0, 2 of head 1;
    # attribute 1 gets the odd channels
    head0 = torch.nn.functional.normalize(fixed.heads[0](maps.flatten(2)), dim=-1)
    assert torch.allclose(old[:, 0], torch.stack([head0[:, 0], head0[:, 2], head1[:, 0], head1[:, 2]], 1))
    assert torch.allclose(old[:, 1], torch.stack([head0[:, 1], head0[:, 3], head1[:, 1], head1[:, 3]], 1))
    with pytest.raises(ValueError, match="built for 6"):
        fixed(torch.randn(1, 4, 3, 3))


def test_scores_are_best_channel_over_temperature():
    regions = torch.nn.functional.normalize(torch.randn(2, 2, 5, 3), dim=-1)
    attributes = torch.nn.functional.normalize(torch.randn(2, 3), dim=-1)
    sims = region_similarities(regions, attributes)
    expected = torch.stack([torch.stack([regions[b, a] @ attributes[a] for a in range(2)]) for b in range(2)])
    assert torch.allclose(sims, expected, atol=1e-6)
    assert torch.allclose(image_scores(sims, 0.07), expected.amax(-1) / 0.07)


def test_heatmap_peak_lands_on_its_png_pixels():
    # stride-32 map of a 256 x 160 input (8 x 5), PNG 512 x 320: the hand-placed peak in cell (row 5,
    # col 3) covers input pixels y 160-192, x 96-128, i.e. PNG y 320-384, x 192-256
    heat = np.zeros((8, 5), np.float32)
    heat[5, 3] = 1.0
    png = heatmap_to_png(heat, stride=32, input_size=(256, 160), png_size=(512, 320))
    assert png.shape == (512, 320)
    y, x = np.unravel_index(np.argmax(png), png.shape)
    assert 320 <= y < 384 and 192 <= x < 256
    assert abs(y - 352) <= 2 and abs(x - 224) <= 2  # the cell's centre
    boxes = heatmap_regions(png, percentile=99.0)
    assert len(boxes) == 1
    cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
    assert abs(cx - 224) <= 1 and abs(cy - 352) <= 1
    # a map whose last cell covers padding: 100 x 70 input at stride 32 is 4 x 3; the last row's cell
    # centre is input y 112 (outside), so the visible peak sits at the bottom edge
    heat = np.zeros((4, 3), np.float32)
    heat[3, 0] = 1.0
    png = heatmap_to_png(heat, stride=32, input_size=(100, 70), png_size=(100, 70))
    assert png.shape == (100, 70) and np.unravel_index(np.argmax(png), png.shape)[0] == 99
    with pytest.raises(ValueError, match="not the stride-32 map"):
        heatmap_to_png(np.zeros((5, 5)), stride=32, input_size=(256, 160), png_size=(256, 160))


def test_regions_and_image_localisation_by_hand():
    heat = np.zeros((20, 20), np.float32)
    heat[2:6, 3:7] = 2.0  # 16 px block
    heat[12:14, 12:14] = 1.0  # 4 px block
    heat[4, 4] = 3.0  # the maximum
    # 96th percentile of the 400 px: 1.04 (between the 4 px block and the 16 px one): the first block only;
    # at the 90th (0) both blocks
    assert heatmap_regions(heat, percentile=96).tolist() == [[3, 2, 7, 6]]
    assert sorted(heatmap_regions(heat, percentile=90).tolist()) == [[3, 2, 7, 6], [12, 12, 14, 14]]
    assert len(heatmap_regions(np.ones((4, 4)), percentile=95)) == 0
    truths = np.array([[3.0, 2.0, 7.0, 8.0]])  # 4 x 6 box containing the region (4 x 4)
    out = image_localisation(heat, truths, percentile=96)
    assert out["max_iou"] == pytest.approx(16 / 24)
    assert out["pointing_hit"] and out["n_regions"] == 1
    assert out["random_hit"] == pytest.approx(24 / 400)
    far = image_localisation(heat, np.array([[15.0, 15.0, 20.0, 20.0]]), percentile=96)
    assert far["max_iou"] == 0.0 and not far["pointing_hit"] and far["random_hit"] == pytest.approx(25 / 400)


def test_localisation_metrics_values_and_intervals():
    per_image = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "c"],
            "max_iou": [0.6, 0.3, 0.1, 0.5],
            "pointing_hit": [True, True, False, False],
            "random_hit": [0.1, 0.1, 0.2, 0.0],
        }
    )
    got = localisation_metrics(per_image, n_boot=300, seed=1).set_index("metric")
    assert list(got.index) == [hit_metric_name(0.25), "iou_hit@0.50", "pointing_game", "pointing_random"]
    assert got.loc["iou_hit@0.25", "value"] == pytest.approx(0.75)
    assert got.loc["iou_hit@0.50", "value"] == pytest.approx(0.5)
    assert got.loc["pointing_game", "value"] == pytest.approx(0.5)
    assert got.loc["pointing_random", "value"] == pytest.approx(0.1)
    assert (got["value_low"] <= got["value"]).all() and (got["value"] <= got["value_high"]).all()
    assert got.loc["pointing_game", "value_low"] < got.loc["pointing_game", "value_high"]
    assert got["n_images"].eq(4).all() and got["n_patients"].eq(3).all()
    again = localisation_metrics(per_image, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(again.set_index("metric"), got)


def test_attribute_sentences_default_to_report_sentences():
    sentences = attribute_sentences({"mass": [], "own": ["a custom sentence"]})
    assert sentences["own"] == ["a custom sentence"]
    assert "there is a mass in the right breast" in sentences["mass"]
    assert all("mass" in s for s in sentences["mass"]) and not any(
        " no " in f" {s} " for s in sentences["mass"]
    )
    with pytest.raises(ValueError, match="no default"):
        attribute_sentences({"own": []})


class _BlobEncoder(torch.nn.Module):
    """A stand-in image encoder (the test is about the mapper): channel 0 = the image's bright blob, the
    other channels noise, at stride 32."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(x[:, :1], 32)
        noise = torch.sin(pooled * 7.0 + torch.arange(3.0).view(1, 3, 1, 1))
        return torch.cat([pooled, noise], dim=1)

    def feature_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x, self.forward_features(x)]


def _blob_images(tmp_path, n: int) -> pd.DataFrame:
    import cv2

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = (rng.random((128, 96)) * 40).astype(np.uint8)
        positive = i % 2 == 0
        if positive:
            y, x = rng.integers(0, 4) * 32, rng.integers(0, 3) * 32
            image[y : y + 32, x : x + 32] = 255
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), image)
        rows.append({"png_path": str(path), "Mass": int(positive), "patient_id": str(i)})
    return pd.DataFrame(rows)


def test_train_mapper_learns_and_heatmaps_point_at_the_blob(tmp_path):
    frame = _blob_images(tmp_path, 56)
    parts = {
        "train": frame.iloc[:48].reset_index(drop=True),
        "select": frame.iloc[48:].reset_index(drop=True),
    }
    embeddings = torch.nn.functional.normalize(
        torch.randn(1, 8, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    config = MapperConfig(
        seed=3, epochs=40, batch_size=8, lr=1e-2, weight_decay=0.0, patience=40, temperature=0.07,
        input_height=128, input_width=96, feature_stride=32, top_k=1, cache_features=True, legacy=False,
    )  # fmt: skip
    result = train_mapper(parts, embeddings, ["Mass"], config, _BlobEncoder(), progress=False)
    history = result.history
    assert list(history.columns) == ["epoch", "train_loss", "select_loss", "lr", "selected"]
    assert history["selected"].sum() == 1 and result.info["map_shape"] == [4, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    again = train_mapper(parts, embeddings, ["Mass"], config, _BlobEncoder(), progress=False)
    pd.testing.assert_frame_equal(again.history, history)  # seeded: identical on the CPU
    mapper = AttributeMapper(12, 8, 1)
    mapper.load_state_dict(result.state_dict)
    from mammoclip.train.factor import encode_maps

    maps = encode_maps(_BlobEncoder(), parts["select"], config, progress=False)
    heat, scores = mapper_heatmaps(mapper, maps, embeddings, top_k=1, temperature=0.07)
    assert heat.shape == (8, 1, 4, 3) and heat.dtype == np.float16 and scores.shape == (8, 1)
    positives = parts["select"]["Mass"].to_numpy() == 1
    # positives outscore negatives, and the heatmap's maximum is the blob's cell
    assert scores[positives, 0].min() > scores[~positives, 0].max()
    for i in np.flatnonzero(positives):
        blob = maps[i, 0].float().numpy()
        assert np.unravel_index(np.argmax(heat[i, 0]), (4, 3)) == np.unravel_index(np.argmax(blob), (4, 3))


class _NormEncoder(_BlobEncoder):
    """The blob encoder behind a BatchNorm: its running statistics show whether it ran in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(self.norm(x))


@pytest.mark.parametrize("legacy", [False, True])
def test_encoder_statistics_drift_only_with_legacy(tmp_path, legacy):
    frame = _blob_images(tmp_path, 16)
    parts = {
        "train": frame.iloc[:12].reset_index(drop=True),
        "select": frame.iloc[12:].reset_index(drop=True),
    }
    config = MapperConfig(
        seed=0, epochs=1, batch_size=4, input_height=128, input_width=96, feature_stride=32,
        cache_features=not legacy, legacy=legacy,
    )  # fmt: skip
    encoder = _NormEncoder()
    before = encoder.norm.running_mean.clone()
    result = train_mapper(parts, torch.randn(1, 8), ["Mass"], config, encoder, progress=False)
    assert torch.equal(encoder.norm.running_mean, before) != legacy
    assert all(not p.requires_grad for p in encoder.parameters())
    # legacy also scores with the interleaved heads (one head here: the same layout)
    assert result.info["map_shape"] == [4, 3]


def test_mapper_config_defaults_are_upstreams():
    config = MapperConfig(seed=10)
    assert (config.epochs, config.batch_size, config.lr, config.patience) == (20, 8, 1e-4, 5)
    assert (config.temperature, config.weight_decay, config.top_k) == (0.07, 0.01, 3)
    assert (config.input_height, config.input_width, config.feature_stride) == (1520, 912, 32)
    assert MapperConfig(seed=0, legacy=True, cache_features=True).cache_features is False
    with pytest.raises(ValueError, match="feature_stride"):
        MapperConfig(seed=0, feature_stride=4)


def test_localisation_table_compares_with_the_papers_encoder():
    from mammoclip.paper_tables import localisation_table, read_paper_results

    rows = [
        {"metric": m, "value": v, "value_low": v - 0.1, "value_high": v + 0.1}
        for m, v in (
            ("iou_hit@0.25", 0.5),
            ("iou_hit@0.50", 0.25),
            ("pointing_game", 0.6),
            ("pointing_random", 0.01),
        )
    ]
    keys = {"dataset": "vindr", "label": "Mass", "setting": "weak", "data_frac": 1.0, "model": "ours"}
    frame = pd.DataFrame(
        [
            {**keys, "paper_model": "mc_enb5_vindr", "protocol": "clean", "fold": 0, "seed": 10, **r}
            for r in rows
        ]
    )
    paper = read_paper_results(Path(__file__).resolve().parent.parent / "config" / "paper-results.csv")
    table = localisation_table([frame], paper, protocol="clean").set_index("metric")
    assert table.loc["iou_hit@0.25", "paper mc_enb5"] == pytest.approx(0.45)
    assert table.loc["iou_hit@0.25", "ours - mc_enb5"] == pytest.approx(0.05)
    assert table.loc["iou_hit@0.50", "ours"] == "0.250 [0.150, 0.350]"
    assert np.isnan(table.loc["pointing_game", "paper mc_enb5"])
    assert localisation_table([frame], paper, protocol="paper").empty


def test_config_refuses_an_attribute_without_vindr_boxes():
    from mammoclip.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="factor.attributes.*'nodule' is not one of"):
        load_config({"factor": {"attributes": {"nodule": ["a nodule"]}}})
    config = load_config({"factor": {"attributes": {"mass": ["a round mass"]}}})
    assert config["factor"]["attributes"] == {"mass": ["a round mass"]}
    assert config["factor"]["top_k"] == 3 and config["factor"]["feature_stride"] == 32


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_mapper_reads_the_chosen_feature_stage(tmp_path, stride):
    from mammoclip.models.image_encoders import build_image_encoder

    torch.manual_seed(0)
    encoder = build_image_encoder("test_efficientnet", pretrained=False)
    frame = _blob_images(tmp_path, 8)
    parts = {"train": frame.iloc[:6].reset_index(drop=True), "select": frame.iloc[6:].reset_index(drop=True)}
    config = MapperConfig(
        seed=0,
        epochs=1,
        batch_size=4,
        input_height=128,
        input_width=96,
        feature_stride=stride,
        cache_features=True,
    )
    result = train_mapper(parts, torch.randn(1, 8), ["Mass"], config, encoder, progress=False)
    assert result.info["map_shape"] == [128 // stride, 96 // stride]
    channels = encoder.stage_channels[[8, 16, 32].index(stride)]
    from mammoclip.train.factor import encode_maps

    assert encode_maps(encoder, parts["select"], config, progress=False).shape == (
        2,
        channels,
        128 // stride,
        96 // stride,
    )


def test_an_interrupted_mapper_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import mammoclip.train.factor as factor

    frame = _blob_images(tmp_path, 24)
    parts = {
        "train": frame.iloc[:16].reset_index(drop=True),
        "select": frame.iloc[16:].reset_index(drop=True),
    }
    embeddings = torch.nn.functional.normalize(
        torch.randn(1, 8, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    config = MapperConfig(
        seed=5,
        epochs=4,
        batch_size=4,
        lr=1e-2,
        patience=10,
        input_height=128,
        input_width=96,
        cache_features=True,
    )
    whole = train_mapper(parts, embeddings, ["Mass"], config, _BlobEncoder(), progress=False)

    resume = tmp_path / "last.pt"
    save = factor._save_resume

    def killed_after_epoch_2(path, state):
        save(path, state)
        if len(state["history"]) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(factor, "_save_resume", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_mapper(parts, embeddings, ["Mass"], config, _BlobEncoder(), progress=False, resume_path=resume)
    monkeypatch.setattr(factor, "_save_resume", save)
    resumed = train_mapper(
        parts, embeddings, ["Mass"], config, _BlobEncoder(), progress=False, resume_path=resume
    )
    pd.testing.assert_frame_equal(resumed.history, whole.history)
    for key, value in whole.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    # another run's file is refused
    other = MapperConfig(**{**config.to_dict(), "lr": 1e-3})
    with pytest.raises(ValueError, match="other settings"):
        train_mapper(parts, embeddings, ["Mass"], other, _BlobEncoder(), progress=False, resume_path=resume)


def test_uncached_maps_train_as_the_cached_ones(tmp_path):
    frame = _blob_images(tmp_path, 16)
    parts = {
        "train": frame.iloc[:12].reset_index(drop=True),
        "select": frame.iloc[12:].reset_index(drop=True),
    }
    embeddings = torch.nn.functional.normalize(
        torch.randn(1, 8, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    runs = []
    for cache in (True, False):
        config = MapperConfig(
            seed=1, epochs=3, batch_size=4, lr=1e-2, input_height=128, input_width=96, cache_features=cache
        )
        runs.append(train_mapper(parts, embeddings, ["Mass"], config, _NormEncoder().eval(), progress=False))
    cached, uncached = (r.history for r in runs)
    # the same batches in the same order; the cache holds float16 maps, hence the tolerance
    np.testing.assert_allclose(cached["train_loss"], uncached["train_loss"], rtol=1e-2)
    np.testing.assert_allclose(cached["select_loss"], uncached["select_loss"], rtol=1e-2)


def test_schema_attributes_are_the_known_findings():
    from mammoclip.config import load_schema
    from mammoclip.train.factor import ATTRIBUTE_FINDINGS

    attributes = load_schema()["properties"]["factor"]["properties"]["attributes"]
    assert attributes["propertyNames"]["enum"] == list(ATTRIBUTE_FINDINGS)
    assert list(attributes["default"]) == list(ATTRIBUTE_FINDINGS)
