"""Downstream classifier training (mammoclip/train/classify.py): linear probe, finetune, embeddings head."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn
from torch.utils.data import TensorDataset

from mammoclip.train.classify import (
    ClassifierConfig,
    EncoderClassifier,
    LabelledImages,
    balanced_sampler,
    build_classifier,
    build_loss,
    positive_weight,
    predict,
    train_classifier,
    train_head_on_embeddings,
)

H, W = 32, 24


class TinyEncoder(nn.Module):
    """conv -> BatchNorm -> ReLU -> mean pool -> dropout, ``out_dim`` 8 (the ImageEncoder contract)."""

    out_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _images(n: int, seed: int) -> TensorDataset:
    """Random 3x32x24 images; positives are brighter (learnable), half positive."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).float()
    x = torch.randn(n, 3, H, W, generator=g) + 1.5 * y[:, None, None, None]
    return TensorDataset(x, y)


def _config(**kw) -> ClassifierConfig:
    base = dict(
        mode="linear_probe",
        label="cancer",
        n_classes=1,
        precision="fp32",
        num_workers=0,
        epochs=2,
        batch_size=8,
        lr=1e-2,
        weight_decay=0.0,
        warmup_epochs=0,
        seed=0,
    )
    base.update(kw)
    return ClassifierConfig(**base)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _blobs(n: int, dim: int, n_classes: int, seed: int, shift: float = 3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = np.random.default_rng(123).normal(size=(n_classes, dim)) * shift
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


# ---- positive weight ------------------------------------------------------------------------------


def test_positive_weight_is_neg_over_pos_of_trained_rows():
    assert positive_weight([1, 0, 0, 0]) == 3.0
    # Folds as upstream's RSNA: it trains on folds 1+2 but hard-codes neg/pos of all rows outside fold 0.
    table = pd.DataFrame(
        {
            "fold": np.repeat([0, 1, 2, 3], 10),
            "cancer": np.concatenate([[1] + [0] * 9, [1] + [0] * 9, [1] + [0] * 9, [1, 1] + [0] * 8]),
        }
    )
    trained = table[table.fold.isin([1, 2])].cancer
    hard_coded = positive_weight(table[table.fold != 0].cancer)  # what upstream's table holds
    assert positive_weight(trained) == 9.0
    assert hard_coded == 6.5
    loss = build_loss(_config(weighted_loss=True), trained)
    assert loss.pos_weight.item() == 9.0
    explicit = build_loss(_config(weighted_loss=True, pos_weight=hard_coded), trained)
    assert explicit.pos_weight.item() == 6.5
    assert build_loss(_config(weighted_loss=False), trained).pos_weight is None
    assert isinstance(build_loss(_config(n_classes=4), [0, 1, 2, 3]), nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="no positive"):
        positive_weight([0, 0, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        positive_weight([0, 2])


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        _config(mode="probe")
    with pytest.raises(ValueError, match="precision"):
        _config(precision="fp8")
    with pytest.raises(ValueError, match="n_classes"):
        _config(n_classes=0)
    assert _config().to_dict()["mode"] == "linear_probe"
    # run settings have no default; training settings left out get the label's schema default
    run = dict(mode="finetune", n_classes=1, seed=10, precision="fp32", num_workers=0)
    with pytest.raises(TypeError, match="seed"):
        ClassifierConfig(**{k: v for k, v in run.items() if k != "seed"}, label="Mass")
    assert ClassifierConfig(**run, label="Mass").to_dict() == {
        **run,
        "label": "Mass",
        "epochs": 30,
        "batch_size": 8,
        "lr": 5e-5,
        "weight_decay": 1e-4,
        "warmup_epochs": 1,
        "balanced_sampler": False,
        "weighted_loss": True,
        "pos_weight": None,
    }
    cancer = ClassifierConfig(**run, label="cancer")
    assert (cancer.epochs, cancer.batch_size) == (20, 6)


# ---- linear probe vs finetune on images ---------------------------------------------------------


def test_linear_probe_keeps_encoder_and_bn_stats_frozen():
    torch.manual_seed(0)
    model = build_classifier(TinyEncoder(), _config(mode="linear_probe"))
    assert isinstance(model, EncoderClassifier) and model.freeze_encoder
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert model.training and model.head.training and not model.encoder.training
    assert not model.encoder.bn.training and not model.encoder.drop.training

    encoder_before, head_before = _snapshot(model.encoder), _snapshot(model.head)
    # bf16 asked on the CPU: runs in fp32.
    best, history = train_classifier(
        model, _images(24, 1), _images(16, 2), _config(mode="linear_probe", precision="bf16"), device="cpu"
    )
    encoder_after = _snapshot(model.encoder)
    assert set(encoder_after) >= {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    for key, value in encoder_before.items():
        assert torch.equal(value, encoder_after[key]), key
    assert encoder_after["bn.num_batches_tracked"].item() == 0
    assert not torch.equal(head_before["weight"], model.head.weight)
    assert [row["epoch"] for row in history] == [1, 2]
    assert sum(row["selected"] for row in history) == 1
    assert torch.equal(best["head.weight"], model.head.weight.detach())

    # What upstream does (model.train() with requires_grad=False only): the same encoder's stats drift.
    plain = TinyEncoder()
    plain.load_state_dict(encoder_before)
    plain.requires_grad_(False).train()
    with torch.no_grad():
        plain(_images(8, 3).tensors[0])
    assert not torch.equal(plain.bn.running_mean, encoder_before["bn.running_mean"])


def test_finetune_updates_encoder():
    from mammoclip.models.image_encoders import build_image_encoder

    encoder = build_image_encoder("test_efficientnet", pretrained=False)
    config = _config(mode="finetune", epochs=1, lr=1e-3)
    model = build_classifier(encoder, config)
    assert not model.freeze_encoder and all(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert model.encoder.training
    before = _snapshot(model.encoder)
    _, history = train_classifier(model, _images(16, 1), _images(8, 2), config, device="cpu")
    after = _snapshot(model.encoder)
    params = [name for name, _ in model.encoder.named_parameters()]
    changed = [name for name in params if not torch.equal(before[name], after[name])]
    assert len(changed) > len(params) // 2
    assert math.isfinite(history[0]["train_loss"])
    with pytest.raises(ValueError, match="mode"):
        train_classifier(model, _images(8, 1), _images(8, 2), _config(mode="linear_probe"))


# ---- embeddings head ------------------------------------------------------------------------------


def test_embedding_probe_learns_separable_problem_deterministically():
    train_x, train_y = _blobs(200, 16, 2, seed=1, shift=1.0)
    select_x, select_y = _blobs(100, 16, 2, seed=2, shift=1.0)
    config = _config(epochs=4, batch_size=32, lr=5e-2, warmup_epochs=1)
    head, history = train_head_on_embeddings(train_x, train_y, select_x, select_y, config)
    probs = predict(head, select_x)
    assert probs.shape == (100,) and ((probs >= 0) & (probs <= 1)).all()
    auroc = roc_auc_score(select_y, probs)
    assert auroc > 0.95
    (chosen,) = [row for row in history if row["selected"]]
    assert chosen["select_auroc"] == pytest.approx(auroc, abs=1e-12)

    head2, history2 = train_head_on_embeddings(train_x, train_y, select_x, select_y, config)
    assert torch.equal(head.weight, head2.weight) and torch.equal(head.bias, head2.bias)
    assert history == history2
    head3, _ = train_head_on_embeddings(
        train_x, train_y, select_x, select_y, _config(**{**vars(config), "seed": 1})
    )
    assert not torch.equal(head.weight, head3.weight)


def test_density_multiclass_selects_by_accuracy():
    train_x, train_y = _blobs(160, 12, 4, seed=3)
    select_x, select_y = _blobs(80, 12, 4, seed=4)
    config = _config(n_classes=4, epochs=3, batch_size=16, lr=2e-2, weighted_loss=True)
    head, history = train_head_on_embeddings(train_x, train_y, select_x, select_y, config)
    assert head.out_features == 4
    assert all("select_accuracy" in row and "select_auroc" not in row for row in history)
    probs = predict(head, select_x)
    assert probs.shape == (80, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = accuracy_score(select_y, probs.argmax(axis=1))
    accuracies = [row["select_accuracy"] for row in history]
    best = int(np.argmax(accuracies))  # first maximum
    assert [row["selected"] for row in history] == [i == best for i in range(len(history))]
    assert accuracy == accuracies[best] and accuracy > 0.9
    with pytest.raises(ValueError, match="0..3"):
        train_head_on_embeddings(train_x, train_y + 1, select_x, select_y, config)


def test_epoch_selection_picks_first_best_select_epoch():
    """A 1-d logistic model starting with the wrong sign: select AUROC is 0 until the weight crosses zero,
    then 1 for every later epoch; the selected epoch is the first with AUROC 1 (earliest of the ties)."""
    rng = np.random.default_rng(0)
    train_x, select_x = rng.uniform(-1, 1, (64, 1)), rng.uniform(-1, 1, (32, 1))
    train = TensorDataset(torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_x[:, 0] > 0).float())
    select = TensorDataset(
        torch.tensor(select_x, dtype=torch.float32), torch.tensor(select_x[:, 0] > 0).float()
    )
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-1.0)
        model.bias.zero_()
    config = _config(mode="finetune", epochs=8, batch_size=16, lr=0.1, weighted_loss=False)
    best, history = train_classifier(model, train, select, config, device="cpu")
    aurocs = [row["select_auroc"] for row in history]
    first_one = aurocs.index(1.0)
    assert set(aurocs) == {0.0, 1.0} and aurocs[:first_one] == [0.0] * first_one
    assert aurocs[first_one:] == [1.0] * (len(aurocs) - first_one)
    assert 0 < first_one < len(aurocs) - 1
    assert [row["selected"] for row in history] == [i == first_one for i in range(len(history))]
    assert best["weight"].item() > 0
    assert torch.equal(model.weight.detach(), best["weight"])  # the selected state is loaded back
    assert roc_auc_score(select.tensors[1], predict(model, select)) == 1.0


# ---- balanced sampler -----------------------------------------------------------------------------


class _RecordingDataset(TensorDataset):
    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__(*tensors)
        self.seen: list[int] = []

    def __getitem__(self, index):
        self.seen.append(int(index))
        return super().__getitem__(index)


def test_balanced_sampler_draws_half_positives():
    n = 2000
    labels = (np.arange(n) % 10 == 0).astype(int)  # 10 % positive
    draws = list(balanced_sampler(labels, seed=5))
    assert len(draws) == n
    fraction = labels[draws].mean()
    assert abs(fraction - 0.5) < 4 * math.sqrt(0.25 / n)  # 4 sigma binomial bound (~0.045)
    assert draws == list(balanced_sampler(labels, seed=5))
    assert draws != list(balanced_sampler(labels, seed=6))

    # ...and the training loop uses it on the training labels.
    m = 400
    y = torch.tensor((np.arange(m) % 10 == 0).astype(np.float32))
    train = _RecordingDataset(torch.randn(m, 1), y)
    select = TensorDataset(torch.randn(20, 1), (torch.arange(20) % 2).float())
    config = _config(mode="finetune", epochs=1, batch_size=50, balanced_sampler=True, weighted_loss=False)
    train_classifier(nn.Linear(1, 1), train, select, config, device="cpu")
    assert len(train.seen) == m
    assert abs(y[train.seen].mean().item() - 0.5) < 4 * math.sqrt(0.25 / m)


# ---- image files --------------------------------------------------------------------------------


def test_labelled_images_reads_pngs(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (H, W), dtype=np.uint8))
        rows.append({"image_id": f"img{i}", "path": str(path), "density": i})
    ds = LabelledImages(pd.DataFrame(rows), "density", height=H, width=W)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 2, 3]
    x, y = ds[2]
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and y == 2
    with pytest.raises(ValueError, match="missing"):
        LabelledImages(pd.DataFrame(rows), "cancer", height=H, width=W)
