"""Optimiser groups, the warmup-cosine schedule and the resumable pre-training loop (CPU, tiny models).

The helpers at the top (dataset, collate, models) are shared with tests/test_ddp.py.
"""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import get_cosine_schedule_with_warmup

from mammoclip.train import pretrain
from mammoclip.train.optim import build_optimizer
from mammoclip.train.pretrain import TrainConfig, read_metrics, train_clip

TEXTS = (
    "there is a spiculated mass in the upper outer quadrant of the left breast",
    "scattered areas of fibroglandular density no suspicious calcifications",
    "no mammographic evidence of malignancy birads 1 negative",
    "grouped amorphous calcifications in the right breast at 10 o clock",
    "no mammographic evidence of malignancy birads 1 negative",  # duplicates -> false negatives
    "an oval circumscribed mass likely a benign cyst recommend ultrasound",
)
IMAGE_HW = (64, 48)


def text_id(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class PairDataset(Dataset):
    """Fixed random two-view images and two texts per sample; ``augment`` adds noise from all three RNGs."""

    def __init__(
        self, n: int, *, seed: int = 0, augment: bool = False, second: bool = True, dtype=torch.float32
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 2, 3, *IMAGE_HW, generator=g).to(dtype)
        self.texts = [(TEXTS[i % len(TEXTS)], TEXTS[(i * 7 + 3) % len(TEXTS)]) for i in range(n)]
        self.augment = augment
        self.second = second
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image, image2 = self.images[i, 0].clone(), self.images[i, 1].clone()
        if self.augment:  # torch, numpy and python RNGs, as real augmentation pipelines use
            image += 0.05 * torch.randn_like(image) + float(np.random.rand()) * 0.05
            image2 += 0.05 * random.random()
        sample = {"image": image, "text": self.texts[i][0]}
        if self.second:
            sample.update(image2=image2, text2=self.texts[i][1])
        return sample


class Collate:
    """The collate contract of the trainer: images, tokens, text ids (hashes), optional second view/text."""

    def __init__(self, tokenizer, max_length: int = 24) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _tok(self, texts):
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, samples: list[dict]) -> dict:
        ids, mask = self._tok(s["text"] for s in samples)
        batch = {
            "images": torch.stack([s["image"] for s in samples]),
            "input_ids": ids,
            "attention_mask": mask,
            "text_ids": torch.tensor([text_id(s["text"]) for s in samples], dtype=torch.long),
        }
        if "image2" in samples[0]:
            ids2, mask2 = self._tok(s["text2"] for s in samples)
            batch.update(
                images2=torch.stack([s["image2"] for s in samples]),
                input_ids2=ids2,
                attention_mask2=mask2,
                text2_ids=torch.tensor([text_id(s["text2"]) for s in samples], dtype=torch.long),
            )
        return batch


class TinyConvEncoder(nn.Module):
    """A 2-layer conv image encoder without BatchNorm or dropout (exact DDP-vs-single comparisons)."""

    def __init__(self, out_dim: int = 16) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.gelu(self.conv2(F.gelu(self.conv1(x)))), 1).flatten(1)


def tiny_clip(bert_dir, *, exact: bool = False, seed: int = 0):
    """``(model, tokenizer)``: timm's test EfficientNet (BN, train-mode dropout in BERT) + tiny BERT, or with
    ``exact`` a BN-free conv encoder and a dropout-free BERT, whose outputs do not depend on batch split."""
    from transformers import BertModel

    from mammoclip.models.clip import build_clip
    from mammoclip.models.text_encoders import load_tokenizer

    torch.manual_seed(seed)
    if not exact:
        return build_clip(
            image_encoder="test_efficientnet",
            text_backbone=str(bert_dir),
            pretrained_image=False,
            projection_dim=32,
        )
    bert = BertModel.from_pretrained(
        str(bert_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, local_files_only=True
    )
    return build_clip(
        image_encoder=TinyConvEncoder(),
        text_backbone=bert,
        tokenizer=load_tokenizer(bert_dir),
        projection_dim=32,
    )


def cpu_config(**overrides) -> TrainConfig:
    """Two short CPU epochs; the settings not named here are the schema's defaults."""
    base = dict(
        epochs=2,
        lr=1e-3,
        weight_decay=1e-4,
        warmup_epochs=0.5,  # 2 of 8 steps
        batch_size=4,
        num_workers=0,
        seed=3,
        log_every=1,
        precision="bf16",  # ignored on the CPU
    )
    base.update(overrides)
    return TrainConfig(**base)


def model_state(path):
    return pretrain.load_train_state(path)["model"]


def rows_without_timing(path):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(path)]


# --------------------------------------------------------------------------------------------------------
# optimiser and schedule
# --------------------------------------------------------------------------------------------------------


def test_optimizer_groups_exclude_bias_norm_and_logit_scale(tiny_bert_dir):
    model, _ = tiny_clip(tiny_bert_dir)
    model.text_encoder.text_encoder.pooler.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert "logit_scale" in no_decay
    assert all(
        n.endswith("bias") or "norm" in n.lower() or n == "logit_scale" or ".bn" in n for n in no_decay
    )
    # every norm layer (timm BatchNormAct2d in the EfficientNet, BERT LayerNorm) found by type
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase | nn.LayerNorm):
            for leaf, _ in mod.named_parameters(recurse=False):
                assert f"{mod_name}.{leaf}" in no_decay
    assert any(".bn1." in n for n in no_decay), (
        "BatchNorm weights (named bn*, not *norm*) must be found by type"
    )
    assert all(n.endswith("weight") for n in decay)
    assert "image_projection.projection.weight" in decay
    # frozen pooler left out, everything else present exactly once
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert not any(".pooler." in n for n in trainable)


def test_optimizer_upstream_mode_decays_everything(tiny_bert_dir):
    model, _ = tiny_clip(tiny_bert_dir)
    opt = build_optimizer(model, lr=1e-4, weight_decay=1e-4, exclude_norms_biases_and_scale=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert opt.param_groups[0]["name"] == "decay"
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_warmup_cosine_values():
    """The schedule the trainers use: linear warmup from 0, then a half-cosine to 0."""
    param = nn.Parameter(torch.zeros(()))
    opt = torch.optim.AdamW([param], lr=0.1)
    sched = get_cosine_schedule_with_warmup(opt, 4, 12)
    lrs = []
    for _ in range(13):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0  # as upstream, the first optimiser step runs at lr 0
    assert lrs[2] == pytest.approx(0.05)
    assert lrs[4] == pytest.approx(0.1)  # peak at the end of warmup
    assert lrs[8] == pytest.approx(0.1 * math.cos(math.pi / 4) ** 2)  # half-way: 0.05
    assert lrs[12] == pytest.approx(0.0, abs=1e-18)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


# --------------------------------------------------------------------------------------------------------
# training, checkpoints, resume
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    return PairDataset(16, seed=1, augment=True), PairDataset(6, seed=2)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_bert_dir, data):
    """Two epochs without interruption (4 steps each, BN in train mode, BERT dropout on, noisy data)."""
    out = tmp_path_factory.mktemp("straight")
    model, tok = tiny_clip(tiny_bert_dir)
    best = train_clip(
        model, tok, *data, Collate(tok), out_dir=out, config=cpu_config(), metadata={"run": "straight"}
    )
    return out, best


def test_training_writes_outputs(straight):
    from mammoclip.checkpoints import load_clip, read_checkpoint

    out, best = straight
    assert best == out / "model-best.tar"
    rows = read_metrics(out / "metrics.csv")
    assert [r["split"] for r in rows].count("train_step") == 8
    assert [(r["epoch"], r["step"]) for r in rows if r["split"] == "val"] == [("1", "4"), ("2", "8")]
    assert all(math.isfinite(float(r["loss"])) and float(r["images_per_s"]) > 0 for r in rows)
    # the warmup (0.25 of 8 steps = 2): the first step at lr 0, the second at half the peak
    steps = [r for r in rows if r["split"] == "train_step"]
    assert float(steps[0]["lr"]) == 0.0 and float(steps[1]["lr"]) == pytest.approx(5e-4)
    # all four loss terms logged with both views and texts
    assert all(float(r[k]) > 0 for r in rows for k in ("i2t", "t2i", "i2i", "t2t"))
    val = {int(r["epoch"]): float(r["loss"]) for r in rows if r["split"] == "val"}
    best_epoch = min(val, key=val.get)

    ckpt = read_checkpoint(best)
    assert any(k.startswith("image_encoder.") for k in ckpt["model"])
    meta = ckpt["mammoclip"]["metadata"]
    assert meta["run"] == "straight" and meta["epoch"] == best_epoch == ckpt["epoch"]
    assert meta["val_loss"] == pytest.approx(val[best_epoch])
    assert meta["seed"] == 3 and meta["train_config"]["epochs"] == 2
    model, _, info = load_clip(best)
    assert info["format"] == "mammoclip"
    state = pretrain.load_train_state(out / "last.pt")
    assert state["epoch"] == 2 and state["global_step"] == 8 and state["best_epoch"] == best_epoch
    assert set(state) >= {"optimizer", "scheduler", "scaler", "rng", "loader", "config"}
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_finished_run_returns_immediately(straight, tiny_bert_dir, data):
    out, best = straight
    before = (out / "last.pt").stat().st_mtime_ns, (out / "metrics.csv").read_bytes()
    model, tok = tiny_clip(tiny_bert_dir)
    again = train_clip(model, tok, *data, Collate(tok), out_dir=out, config=cpu_config(), metadata={})
    assert again == best
    assert ((out / "last.pt").stat().st_mtime_ns, (out / "metrics.csv").read_bytes()) == before


def test_resume_refuses_changed_settings(straight, tiny_bert_dir, data):
    out, _ = straight
    model, tok = tiny_clip(tiny_bert_dir)
    with pytest.raises(ValueError, match="lr"):
        train_clip(model, tok, *data, Collate(tok), out_dir=out, config=cpu_config(lr=2e-3), metadata={})


class Interrupt(Exception):
    pass


def test_resume_after_epoch_boundary_is_exact(tmp_path, monkeypatch, straight, tiny_bert_dir, data, caplog):
    """Killed right after last.pt of epoch 1 was written; the resumed run ends with identical weights."""
    ref_out, _ = straight
    real_save = pretrain._save_state

    def save_then_die(path, **kwargs):
        real_save(path, **kwargs)
        raise Interrupt

    monkeypatch.setattr(pretrain, "_save_state", save_then_die)
    model, tok = tiny_clip(tiny_bert_dir)
    with pytest.raises(Interrupt):
        train_clip(model, tok, *data, Collate(tok), out_dir=tmp_path, config=cpu_config(), metadata={})
    assert pretrain.load_train_state(tmp_path / "last.pt")["epoch"] == 1
    monkeypatch.setattr(pretrain, "_save_state", real_save)

    model, tok = tiny_clip(tiny_bert_dir, seed=123)  # different init: everything must come from last.pt
    with caplog.at_level("INFO", logger="mammoclip.train.pretrain"):
        train_clip(model, tok, *data, Collate(tok), out_dir=tmp_path, config=cpu_config(), metadata={})
    assert "resuming from" in caplog.text
    ref, got = model_state(ref_out / "last.pt"), model_state(tmp_path / "last.pt")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert rows_without_timing(tmp_path / "metrics.csv") == rows_without_timing(ref_out / "metrics.csv")
    ref_state = pretrain.load_train_state(ref_out / "last.pt")
    got_state = pretrain.load_train_state(tmp_path / "last.pt")
    for a, b in zip(
        ref_state["optimizer"]["state"].values(), got_state["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert ref_state["scheduler"] == got_state["scheduler"]


def test_resume_after_mid_epoch_interrupt_is_exact(tmp_path, straight, tiny_bert_dir, data):
    """Killed at step 6 (inside epoch 2): the rerun restarts epoch 2 from last.pt (its beginning); the
    partial epoch's rows are dropped, so the metrics equal the uninterrupted run's, without duplicates."""
    ref_out, _ = straight

    def die(epoch, step):
        if step == 6:
            raise Interrupt

    model, tok = tiny_clip(tiny_bert_dir)
    with pytest.raises(Interrupt):
        train_clip(
            model, tok, *data, Collate(tok), out_dir=tmp_path, config=cpu_config(), metadata={}, on_step=die
        )
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")][-1] == "6"
    model, tok = tiny_clip(tiny_bert_dir)
    train_clip(model, tok, *data, Collate(tok), out_dir=tmp_path, config=cpu_config(), metadata={})
    ref, got = model_state(ref_out / "last.pt"), model_state(tmp_path / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert rows_without_timing(tmp_path / "metrics.csv") == rows_without_timing(ref_out / "metrics.csv")


def test_workers_accumulation_clipping_single_view(tmp_path, tiny_bert_dir):
    """Loader workers, accumulation with a short last group, clipping, masking, one view and one text,
    set_epoch through a ConcatDataset."""
    from torch.utils.data import ConcatDataset

    from mammoclip.checkpoints import read_checkpoint

    parts = [PairDataset(n, seed=4 + n, augment=True, second=False) for n in (6, 8)]
    train, val = ConcatDataset(parts), PairDataset(5, seed=5, second=False)
    config = cpu_config(
        epochs=1,
        batch_size=4,
        drop_last=False,
        grad_accum_steps=3,
        max_grad_norm=1.0,
        num_workers=1,
        mask_false_negatives=True,
        clamp_logit_scale=2.0,
        warmup_epochs=0,
    )
    model, tok = tiny_clip(tiny_bert_dir)
    best = train_clip(model, tok, train, val, Collate(tok), out_dir=tmp_path, config=config, metadata={})
    rows = read_metrics(tmp_path / "metrics.csv")
    steps = [r for r in rows if r["split"] == "train_step"]
    assert [r["step"] for r in steps] == ["1", "2"]  # 4 batches (4,4,4,2) in groups of 3 and 1
    assert all(float(r["i2i"]) == 0.0 and float(r["t2t"]) == 0.0 for r in rows)
    assert float(model.logit_scale.detach()) <= 2.0
    assert read_checkpoint(best)["mammoclip"]["metadata"]["effective_batch_size"] == 12
    assert [p.epochs_seen for p in parts] == [[1], [1]] and val.epochs_seen == []
