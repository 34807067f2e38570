"""Detector model, data and training (mammoclip/models/detector.py, mammoclip/data/detection_data.py,
mammoclip/train/detect.py) and the encoders' feature stages."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
from torchvision.ops import generalized_box_iou_loss

from mammoclip.data.detection_data import DetectionImages, InputFrame, collate_detection, group_boxes
from mammoclip.evaluate.detection import voc_ap
from mammoclip.inference import PIXEL_MEAN, PIXEL_STD, normalise_image
from mammoclip.models.detector import (
    BoxRegressionHead,
    EncoderPyramid,
    FocalClassificationHead,
    PassThroughTransform,
    build_retinanet,
)
from mammoclip.models.image_encoders import LegacyEfficientNet, build_image_encoder
from mammoclip.train.detect import DetectorConfig, predict_detections, train_detector

SIZE = 64
#: anchors for 64 px inputs (the defaults start at 32 px, for 512 px inputs)
SMALL_ANCHORS = [8, 16, 32, 64, 128]
NO_AUGMENT = {"hflip_p": 0.0, "vflip_p": 0.0, "affine_p": 0.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny models run several times faster so on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**kw) -> DetectorConfig:
    base = dict(
        mode="ft",
        label="Mass",
        seed=0,
        precision="fp32",
        num_workers=0,
        epochs=2,
        batch_size=2,
        lr=1e-3,
        input_height=SIZE,
        input_width=SIZE,
        anchor_sizes=SMALL_ANCHORS,
        fpn_channels=32,
        score_threshold=0.05,
    )
    base.update(kw)
    return DetectorConfig(**base)


def _encoder(seed: int = 0):
    torch.manual_seed(seed)
    return build_image_encoder("test_efficientnet", pretrained=False)


def _detector(*, freeze: bool = False, seed: int = 0, **kw):
    encoder = _encoder(seed)
    torch.manual_seed(seed)
    return build_retinanet(encoder, settings=_config(**kw), freeze=freeze)


def _square_image(height: int, width: int, box, *, seed: int = 0) -> np.ndarray:
    """A dark noisy uint8 image with a bright filled rectangle ``box`` (x0, y0, x1, y1 pixel edges)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, size=(height, width), dtype=np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 230
    return image


def _write_pngs(tmp_path, specs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PNGs for ``specs`` = [(image_id, height, width, box or None)] -> (image rows, box rows)."""
    rows, boxes = [], []
    for n, (image_id, height, width, box) in enumerate(specs):
        path = tmp_path / f"{image_id}.png"
        cv2.imwrite(str(path), _square_image(height, width, box or (0, 0, 0, 0), seed=n))
        rows.append({"image_id": image_id, "patient_id": f"p{n}", "png_path": str(path)})
        if box is not None:
            boxes.append(
                dict(zip(("image_id", "xmin", "ymin", "xmax", "ymax"), (image_id, *box), strict=True))
            )
    return pd.DataFrame(rows), pd.DataFrame(boxes, columns=["image_id", "xmin", "ymin", "xmax", "ymax"])


# --------------------------------------------------------------------------------------------------
# Feature stages
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "channels"), [("b5", (64, 176, 2048)), ("b2", (48, 120, 1408))])
def test_legacy_feature_stages_strides_channels_and_last_is_forward_features(variant, channels):
    torch.manual_seed(0)
    encoder = LegacyEfficientNet(variant).eval()
    assert encoder.stage_channels == channels
    assert len(encoder.state_dict()) == {"b5": 852, "b2": 506}[variant]  # no new parameters or buffers
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        stages = encoder.feature_stages(x)
        features = encoder.forward_features(x)
    assert [tuple(s.shape) for s in stages] == [
        (1, channels[0], 8, 12),
        (1, channels[1], 4, 6),
        (1, channels[2], 2, 3),
    ]
    assert torch.equal(stages[-1], features)


def test_timm_feature_stages_from_the_same_module():
    encoder = _encoder().eval()
    assert encoder.stage_channels == (32, 48, encoder.out_dim)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        stages = encoder.feature_stages(x)
        features = encoder.forward_features(x)
    assert [tuple(s.shape) for s in stages] == [(2, 32, 8, 4), (2, 48, 4, 2), (2, encoder.out_dim, 2, 1)]
    assert torch.equal(stages[-1], features)
    # the stride-8 map is the output of the module timm's feature_info names (same weights, no copy)
    seen = {}
    handle = encoder.model.blocks[2].register_forward_hook(lambda m, i, o: seen.setdefault("c3", o))
    with torch.no_grad():
        encoder.feature_stages(x)
    handle.remove()
    assert torch.equal(seen["c3"], stages[0])


def test_timm_encoder_without_a_pyramid_is_refused():
    encoder = build_image_encoder("test_vit", pretrained=False)
    with pytest.raises(ValueError, match="strides 8, 16 and 32"):
        _ = encoder.stage_channels


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def test_transform_passes_inputs_of_the_configured_size_unchanged():
    model = _detector()
    images = [torch.randn(3, SIZE, SIZE) * 5 + 3, torch.randn(3, SIZE, SIZE)]
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([0])}] * 2
    assert isinstance(model.transform, PassThroughTransform)
    batch, out_targets = model.transform(images, targets)
    assert torch.equal(batch.tensors, torch.stack(images))
    assert batch.image_sizes == [(SIZE, SIZE)] * 2
    assert torch.equal(out_targets[0]["boxes"], targets[0]["boxes"])
    with pytest.raises(ValueError, match="expected"):
        model.transform([torch.randn(3, SIZE, SIZE + 32)])


def test_model_layout_follows_the_settings():
    model = _detector(focal_alpha=0.4, focal_gamma=1.5, max_detections=7, score_threshold=0.3)
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    assert [s[0] for s in model.anchor_generator.sizes] == SMALL_ANCHORS
    assert model.anchor_generator.sizes[0][2] == pytest.approx(8 * 2 ** (2 / 3))
    head = model.head.classification_head
    assert isinstance(head, FocalClassificationHead) and head.num_classes == 1
    assert (head.focal_alpha, head.focal_gamma) == (0.4, 1.5)
    assert model.detections_per_img == 7 and model.nms_thresh == 0.5
    assert model.score_thresh < 0.3 and np.float32(model.score_thresh) == np.nextafter(
        np.float32(0.3), np.float32(0)
    )
    assert model.box_coder is model.head.regression_head.box_coder
    with torch.no_grad():
        features = model.eval().backbone(torch.randn(1, 3, SIZE, SIZE))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


def test_group_norm_heads_and_box_loss_follow_the_settings():
    plain = _detector()
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.head.modules())
    assert plain.head.regression_head._loss_type == "smooth_l1"
    model = _detector(head_norm="group_norm", box_loss="giou", fpn_channels=64)
    for branch in (model.head.classification_head.conv, model.head.regression_head.conv):
        norms = [m for m in branch.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert [(n.num_groups, n.num_channels) for n in norms] == [(16, 64)] * 4
    assert isinstance(model.head.regression_head, BoxRegressionHead)
    assert model.head.regression_head._loss_type == "giou"
    assert model.head.classification_head.cls_logits.in_channels == 64
    assert [
        (g.num_groups)
        for g in _detector(head_norm="group_norm", fpn_channels=256).head.modules()
        if isinstance(g, torch.nn.GroupNorm)
    ] == [32] * 8
    with pytest.raises(ValueError, match="head_norm"):
        _config(head_norm="batch_norm")
    with pytest.raises(ValueError, match="box_loss"):
        _config(box_loss="ciou")
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(lr_schedule="step")


def _regression_case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    anchors = [torch.tensor([[10.0, 10, 30, 30], [12, 8, 40, 34], [50, 50, 60, 70], [0, 0, 8, 8]])] * 2
    deltas = torch.randn(2, 4, 4, generator=generator) * 0.3
    targets = [
        {"boxes": torch.tensor([[11.0, 9, 33, 31], [48, 52, 61, 69]])},
        {"boxes": torch.tensor([[14.0, 10, 36, 30]])},
    ]
    matched = [torch.tensor([0, 0, 1, -1]), torch.tensor([-2, 0, -1, -1])]
    return targets, {"bbox_regression": deltas}, anchors, matched


@pytest.mark.parametrize("loss", ["l1", "smooth_l1", "giou"])
def test_box_regression_head_losses_by_hand(loss):
    coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    head = BoxRegressionHead(8, 9, loss=loss, norm_layer=None)
    head.box_coder = coder
    targets, outputs, anchors, matched = _regression_case()
    per_image = []
    for target, deltas, anchor, match in zip(
        targets, outputs["bbox_regression"], anchors, matched, strict=True
    ):
        fg = match >= 0
        boxes = target["boxes"][match[fg]]
        if loss == "giou":
            value = generalized_box_iou_loss(
                coder.decode_single(deltas[fg], anchor[fg]), boxes, reduction="sum"
            )
        else:
            residual = (deltas[fg] - coder.encode_single(boxes, anchor[fg])).abs()
            value = (
                residual.sum()
                if loss == "l1"
                else torch.where(residual < 1 / 9, 0.5 * residual**2 * 9, residual - 0.5 / 9).sum()
            )
        per_image.append(value / int(fg.sum()))
    expected = sum(per_image) / 2
    assert torch.allclose(head.compute_loss(targets, outputs, anchors, matched), expected)
    if loss == "l1":  # torchvision's own head (L1) agrees
        reference = RetinaNetRegressionHead(8, 9)
        reference.box_coder = coder
        assert torch.allclose(reference.compute_loss(targets, outputs, anchors, matched), expected)


def test_losses_and_boxes_stay_float32_under_autocast():
    model = _detector(score_threshold=0.0)
    image = torch.randn(3, SIZE, SIZE)
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([0])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()([image], [target])
        with torch.no_grad():
            out = model.eval()([image])[0]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert out["boxes"].dtype == torch.float32 and len(out["boxes"]) > 0


def test_focal_head_equals_torchvision_at_its_defaults_and_uses_alpha_gamma():
    torch.manual_seed(0)
    ours = FocalClassificationHead(8, 9, 1, alpha=0.25, gamma=2.0)
    reference = RetinaNetClassificationHead(8, 9, 1)
    logits = torch.randn(2, 40, 1)
    matched = [torch.randint(-2, 2, (40,)), torch.full((40,), -1)]  # -2 ignored, -1 background, >= 0 box
    targets = [{"labels": torch.zeros(2, dtype=torch.int64)}, {"labels": torch.zeros(0, dtype=torch.int64)}]
    outputs = {"cls_logits": logits}
    expected = reference.compute_loss(targets, outputs, matched)
    assert torch.allclose(ours.compute_loss(targets, outputs, matched), expected)
    other = FocalClassificationHead(8, 9, 1, alpha=0.6, gamma=0.0)
    assert not torch.allclose(other.compute_loss(targets, outputs, matched), expected)


def test_detector_overfits_one_image_to_ap_one():
    """Focal loss, anchor matching, box coding and post-processing of torchvision, end to end.

    The heads' hidden convs are re-initialised with PyTorch's Kaiming init: torchvision's std-0.01 init
    (made for long training on 256 channels) needs hundreds of steps to leave its plateau at this width.
    """
    model = _detector(anchor_sizes=[16, 32, 64, 128, 256])
    for branch in (model.head.classification_head.conv, model.head.regression_head.conv):
        for module in branch.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    box = (18, 22, 44, 46)
    image = torch.from_numpy(normalise_image(_square_image(SIZE, SIZE, box)))
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([0])}
    truths = pd.DataFrame([("a", *box)], columns=["image_id", "xmin", "ymin", "xmax", "ymax"])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    ap, losses = 0.0, []
    for step in range(1, 41):
        model.train()
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                out = model([image])[0]
            detections = pd.DataFrame(out["boxes"].numpy(), columns=["xmin", "ymin", "xmax", "ymax"])
            detections.insert(0, "score", out["scores"].numpy())
            detections.insert(0, "image_id", "a")
            ap = voc_ap(detections, truths)
            if ap == 1.0:
                break
    assert ap == 1.0, f"AP {ap} after 40 steps, losses {losses[::5]}"
    assert losses[-1] < losses[0] / 3
    assert out["scores"][0] >= 0.05 and out["labels"].eq(0).all()


def _bn_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_keeps_the_encoder_in_eval_mode_and_unchanged(freeze):
    model = _detector(freeze=freeze)
    encoder = model.backbone.encoder
    assert isinstance(model.backbone, EncoderPyramid)
    model.train()
    assert model.training and model.backbone.fpn.training
    assert all(not m.training for m in encoder.modules()) == freeze
    assert all(not p.requires_grad for p in encoder.parameters()) == freeze
    before = _bn_stats(encoder)
    fpn_before = _bn_stats(model.backbone.fpn)
    image = torch.from_numpy(normalise_image(_square_image(SIZE, SIZE, (10, 10, 30, 30))))
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([0])}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = sum(model([image], [target]).values())
    loss.backward()
    optimizer.step()
    after = encoder.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    running = [k for k in before if k.endswith("running_mean")]
    assert running and unchanged == freeze
    assert all(torch.equal(before[k], after[k]) for k in running) == freeze  # BN statistics too
    assert any(not torch.equal(fpn_before[k], v) for k, v in model.backbone.fpn.state_dict().items())


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def test_dataset_reads_resizes_normalises_and_scales_boxes(tmp_path):
    images, boxes = _write_pngs(tmp_path, [("a", 128, 96, (24, 40, 72, 88)), ("b", 128, 96, None)])
    data = DetectionImages(images, boxes, height=SIZE, width=SIZE)
    image, target, meta = data[0]
    png = cv2.imread(images.at[0, "png_path"], cv2.IMREAD_GRAYSCALE)
    expected = normalise_image(cv2.resize(png, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    assert image.dtype == torch.float32 and np.array_equal(image.numpy(), expected)
    assert torch.allclose(target["boxes"], torch.tensor([[24 * 64 / 96, 40 / 2, 72 * 64 / 96, 88 / 2]]))
    assert target["labels"].tolist() == [0] and meta["image_id"] == "a"
    assert meta["frame"].scale == (64 / 96, 0.5)
    _, empty, _ = data[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    batch = collate_detection([data[0], data[1]])
    assert [len(part) for part in batch] == [2, 2, 2] and batch[2][1]["image_id"] == "b"


def test_nan_boxes_are_dropped_and_counted():
    boxes = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "xmin": [1, np.nan, 2],
            "ymin": [1, 2, 3],
            "xmax": [5, 6, 7],
            "ymax": [5, 6, 8],
        }
    )
    grouped, n_nan = group_boxes(boxes)
    assert n_nan == 1 and sorted(grouped) == ["a", "b"] and grouped["a"].tolist() == [[1, 1, 5, 5]]


def test_horizontal_flip_mirrors_image_and_boxes_exactly(tmp_path):
    images, boxes = _write_pngs(tmp_path, [("a", SIZE, SIZE, (5, 10, 25, 40))])
    plain = DetectionImages(images, boxes, height=SIZE, width=SIZE, augment=NO_AUGMENT)
    flipped = DetectionImages(images, boxes, height=SIZE, width=SIZE, augment={**NO_AUGMENT, "hflip_p": 1.0})
    (x, t, _), (xf, tf, _) = plain[0], flipped[0]
    assert t["boxes"].tolist() == [[5.0, 10.0, 25.0, 40.0]] and torch.equal(xf, x.flip(-1))
    assert tf["boxes"].tolist() == [[SIZE - 25.0, 10.0, SIZE - 5.0, 40.0]]
    vflipped = DetectionImages(images, boxes, height=SIZE, width=SIZE, augment={**NO_AUGMENT, "vflip_p": 1.0})
    xv, tv, _ = vflipped[0]
    assert torch.equal(xv, x.flip(-2)) and tv["boxes"].tolist() == [[5.0, SIZE - 40.0, 25.0, SIZE - 10.0]]


def test_affine_moves_the_box_with_the_square(tmp_path):
    images, boxes = _write_pngs(tmp_path, [("a", SIZE, SIZE, (20, 16, 40, 44))])
    augment = {"hflip_p": 0.5, "vflip_p": 0.5, "affine_p": 1.0, "degrees": 20, "translate": 0.1}
    data = DetectionImages(images, boxes, height=SIZE, width=SIZE, augment={**augment, "shear": 20}, seed=3)
    bright = (0.7 - PIXEL_MEAN) / PIXEL_STD  # normalised value well above the background
    moved = 0
    for epoch in range(4):
        data.set_epoch(epoch)
        image, target, _ = data[0]
        ys, xs = np.nonzero(image[0].numpy() > bright)
        (x0, y0, x1, y1) = target["boxes"][0].tolist()
        assert len(xs) > 100  # the square is still there
        cx, cy = xs + 0.5, ys + 0.5  # pixel centres
        assert x0 <= cx.min() and cx.max() <= x1 and y0 <= cy.min() and cy.max() <= y1
        # tight: the square's corners reach the box's sides (up to interpolation at the edges)
        assert max(cx.min() - x0, x1 - cx.max(), cy.min() - y0, y1 - cy.max()) < 2
        moved += (x0, y0, x1, y1) != (20, 16, 40, 44)
    assert moved == 4


def test_augmentation_is_seeded_per_seed_epoch_and_index(tmp_path):
    images, boxes = _write_pngs(tmp_path, [("a", SIZE, SIZE, (20, 16, 40, 44))])
    settings = _config().augment
    one = DetectionImages(images, boxes, height=SIZE, width=SIZE, augment=settings, seed=1)
    two = DetectionImages(images, boxes, height=SIZE, width=SIZE, augment=settings, seed=1)
    state = torch.get_rng_state()
    a, b = one[0], two[0]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    two.set_epoch(1)
    assert not torch.equal(two[0][0], a[0])


def test_boxes_map_back_to_png_pixels(tmp_path):
    box = np.array([[12.0, 30.0, 36.0, 70.0]])
    stretched = InputFrame(png_height=80, png_width=40, height=SIZE, width=SIZE)
    assert stretched.scale == (1.6, 0.8)
    assert np.allclose(stretched.to_input(box), [[19.2, 24.0, 57.6, 56.0]])
    assert np.allclose(stretched.to_png(stretched.to_input(box)), box)
    kept = InputFrame(png_height=80, png_width=40, height=SIZE, width=SIZE, keep_aspect=True)
    assert kept.resized == (64, 32) and kept.scale == (0.8, 0.8)
    assert np.allclose(kept.to_png(kept.to_input(box)), box)
    # a detection reaching into the padding is clipped to the PNG
    assert np.allclose(kept.to_png(np.array([[20.0, 10.0, 60.0, 64.0]])), [[25.0, 12.5, 40.0, 80.0]])

    images, boxes = _write_pngs(tmp_path, [("a", 80, 40, (12, 30, 36, 70))])
    data = DetectionImages(images, boxes, height=SIZE, width=SIZE, keep_aspect=True)
    image, target, meta = data[0]
    assert np.allclose(target["boxes"].numpy(), kept.to_input(box))
    assert meta["frame"] == kept
    padding = image[:, :, 32:]
    assert torch.all(padding == padding.min()) and padding.min() == image.min()  # zero padding at the right


def test_predictions_are_mapped_to_png_pixels_thresholded_and_capped(tmp_path):
    images, boxes = _write_pngs(tmp_path, [("a", 80, 40, (12, 30, 36, 70)), ("b", 128, 128, None)])

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            out = {
                "boxes": torch.tensor([[16.0, 16.0, 32.0, 48.0], [0.0, 0.0, 8.0, 8.0], [1.0, 1.0, 9.0, 9.0]]),
                "scores": torch.tensor([0.9, 0.5, 0.1]),
                "labels": torch.zeros(3, dtype=torch.int64),
            }
            return [out for _ in batch]

    for keep_aspect in (False, True):
        data = DetectionImages(images, boxes, height=SIZE, width=SIZE, keep_aspect=keep_aspect)
        out = predict_detections(Fixed(), data, score_threshold=0.5, max_detections=1)
        assert list(out.columns) == ["image_id", "score", "xmin", "ymin", "xmax", "ymax"]
        assert out["image_id"].tolist() == ["a", "b"] and out["score"].tolist() == pytest.approx([0.9, 0.9])
        scale_a = (0.8, 0.8) if keep_aspect else (64 / 40, 64 / 80)
        expected_a = [16 / scale_a[0], 16 / scale_a[1], min(32 / scale_a[0], 40), 48 / scale_a[1]]
        assert np.allclose(out.iloc[0, 2:].to_numpy(dtype=float), expected_a)
        assert np.allclose(out.iloc[1, 2:].to_numpy(dtype=float), [32.0, 32.0, 64.0, 96.0])
    two = predict_detections(Fixed(), data, score_threshold=0.5, max_detections=5)
    assert two["score"].tolist() == pytest.approx([0.9, 0.5, 0.9, 0.5])  # >= threshold kept


# --------------------------------------------------------------------------------------------------
# Config and training
# --------------------------------------------------------------------------------------------------


def test_config_defaults_come_from_the_schema():
    config = DetectorConfig(mode="freeze", label="Mass", seed=1, precision="fp32", num_workers=0)
    assert (config.lr, config.batch_size, config.epochs, config.max_grad_norm) == (5e-5, 7, 120, 0.1)
    assert (config.input_height, config.input_width, config.keep_aspect) == (512, 512, False)
    assert config.anchor_sizes == [32, 64, 128, 256, 512] and config.max_detections == 100
    assert (config.focal_alpha, config.focal_gamma, config.score_threshold) == (0.25, 2.0, None)
    assert (config.fpn_channels, config.head_norm, config.box_loss, config.lr_schedule) == (
        256,
        "none",
        "smooth_l1",
        "constant",
    )
    assert config.freeze and not _config().freeze
    partial = DetectorConfig(mode="ft", seed=1, precision="fp32", num_workers=0, augment={"hflip_p": 0.0})
    assert (
        partial.augment is not None
        and partial.augment["hflip_p"] == 0.0
        and partial.augment["vflip_p"] == 0.5
    )


def test_config_from_a_label_section():
    from mammoclip.train.settings import schema_defaults

    section = schema_defaults("detect", "labels", "Suspicious_Calcification")
    section["mode_overrides"] = {"ft": {"epochs": 3, "lr": 1e-4}}
    run = dict(seed=2, num_workers=1, precision="bf16", label="Suspicious_Calcification")
    ft = DetectorConfig.from_config(section, mode="ft", protocol="paper", **run)
    assert (ft.epochs, ft.lr, ft.score_threshold, ft.mode) == (3, 1e-4, 0.2, "ft")
    freeze = DetectorConfig.from_config(section, mode="freeze", protocol="clean", **run)
    assert (freeze.epochs, freeze.score_threshold) == (120, 0.05)
    assert (
        DetectorConfig.from_config(
            {**section, "score_threshold": 0.3}, mode="ft", protocol="clean", **run
        ).score_threshold
        == 0.3
    )
    with pytest.raises(ValueError, match="unknown setting"):
        DetectorConfig.from_config({**section, "nms": 0.4}, mode="ft", **run)
    with pytest.raises(ValueError, match="mode"):
        DetectorConfig.from_config(section, mode="lp", **run)


def _tiny_run(tmp_path, **kw):
    specs = [(f"t{i}", 96, 64, (8 + 4 * i, 12 + 3 * i, 32 + 4 * i, 40 + 3 * i)) for i in range(4)]
    specs += [("t4", 96, 64, None)]  # a negative training image
    specs += [("s0", 96, 64, (20, 30, 44, 60)), ("s1", 96, 64, None), ("r0", 96, 64, (10, 10, 34, 40))]
    images, boxes = _write_pngs(tmp_path, specs)
    boxes = pd.concat(
        [boxes, pd.DataFrame([{"image_id": "t0", "xmin": np.nan, "ymin": 1, "xmax": 9, "ymax": 9}])],
        ignore_index=True,
    )
    parts = {
        "train": images[images["image_id"].str.startswith("t")],
        "select": images[images["image_id"].str.startswith("s")],
        "report": images[images["image_id"].str.startswith("r")],
    }
    config = _config(**kw)
    return train_detector(parts, boxes, config, encoder=_encoder(), progress=False)


def test_train_detector_is_deterministic_and_reports_png_boxes(tmp_path):
    # threshold 0: every image keeps max_detections boxes after 2 epochs, so their mapping is checked
    first = _tiny_run(tmp_path, max_detections=3, score_threshold=0.0)
    second = _tiny_run(tmp_path, max_detections=3, score_threshold=0.0)
    pd.testing.assert_frame_equal(first.history, second.history)
    pd.testing.assert_frame_equal(first.detections, second.detections)
    assert all(torch.equal(v, second.state_dict[k]) for k, v in first.state_dict.items())

    history = first.history
    assert list(history.columns)[:2] == ["epoch", "train_loss"] and history["epoch"].tolist() == [1, 2]
    assert {"select_map50", "lr"} <= set(history.columns) and history["selected"].sum() == 1
    assert history["lr"].tolist() == [1e-3, 1e-3]
    # cosine: half the steps done after epoch 1 of 2 (lr 5e-4), none left after epoch 2
    cosine = _tiny_run(tmp_path, max_detections=3, score_threshold=0.0, lr_schedule="cosine").history
    assert cosine["lr"].tolist() == pytest.approx([5e-4, 0.0], abs=1e-12)
    info = first.info
    assert info["best_epoch"] == int(history.loc[history["selected"], "epoch"].iloc[0])
    assert (info["n_train_images"], info["n_train_boxes"], info["n_boxes_dropped_nan"]) == (5, 4, 1)
    assert (info["n_select_images"], info["n_select_boxes"], info["n_report_boxes"]) == (2, 1, 1)
    detections = first.detections
    assert list(detections.columns) == ["image_id", "score", "xmin", "ymin", "xmax", "ymax"]
    assert detections["image_id"].tolist() == ["r0"] * 3
    assert detections["score"].is_monotonic_decreasing and (detections["score"] >= 0).all()
    assert (detections[["xmin", "xmax"]] <= 64).all().all() and (
        detections[["ymin", "ymax"]] <= 96
    ).all().all()


def test_train_detector_loads_the_encoder_of_a_clip_checkpoint(tmp_path, tiny_clip_checkpoint):
    images, boxes = _write_pngs(
        tmp_path, [("a", SIZE, SIZE, (10, 10, 40, 40)), ("b", SIZE, SIZE, (20, 8, 50, 30))]
    )
    parts = {"train": images, "select": images.iloc[:1], "report": images.iloc[1:]}
    config = _config(epochs=1, mode="freeze", augment=None)
    result = train_detector(parts, boxes, config, checkpoint=tiny_clip_checkpoint, progress=False)
    assert result.info["checkpoint"] == str(tiny_clip_checkpoint.resolve())
    assert result.info["encoder"] == "test_efficientnet" and result.info["best_epoch"] == 1
    from mammoclip.checkpoints import load_clip

    clip, _, _ = load_clip(tiny_clip_checkpoint, tokenizer=False)
    encoder_state = {
        k.removeprefix("backbone.encoder."): v
        for k, v in result.state_dict.items()
        if k.startswith("backbone.encoder.")
    }
    assert all(torch.equal(v, encoder_state[k]) for k, v in clip.image_encoder.state_dict().items())
    assert not math.isnan(result.history["select_map50"].iloc[0])


def test_train_detector_needs_a_score_threshold(tmp_path):
    with pytest.raises(ValueError, match="score_threshold"):
        train_detector({}, pd.DataFrame(), _config(score_threshold=None), encoder=_encoder())
