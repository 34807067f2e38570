"""Shared fixtures for the DICOM -> PNG tests: a DICOM writer into tmp_path and a converter."""

from __future__ import annotations

import itertools

import cv2
import pytest

from mammoclip.phantoms.dicom_writer import write_mammogram_dicom


@pytest.fixture
def write_dcm(tmp_path):
    """``write_dcm(stored, **write_mammogram_dicom kwargs) -> Path`` with a fresh name in tmp_path."""
    counter = itertools.count()

    def write(stored, **kwargs):
        return write_mammogram_dicom(tmp_path / "dcm" / f"img{next(counter)}.dcm", stored, **kwargs)

    return write


@pytest.fixture
def convert(tmp_path):
    """``convert(dicom_path, legacy=False, width=96, height=160) -> (manifest row, PNG array or None)``."""
    from mammoclip.preprocess import convert_dicom_to_png

    counter = itertools.count()

    def run(path, *, legacy=False, width=96, height=160):
        dst = tmp_path / "png" / f"out{next(counter)}.png"
        row = convert_dicom_to_png(path, dst, width=width, height=height, legacy=legacy)
        png = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED) if dst.exists() else None
        return row, png

    return run


# ---- text models (tests/test_text_encoders.py, test_clip_model.py, test_checkpoints.py) ----

REPORT_CORPUS = (
    "there is a spiculated mass in the upper outer quadrant of the left breast",
    "scattered areas of fibroglandular density no suspicious calcifications",
    "heterogeneously dense breasts which may obscure small masses",
    "grouped amorphous calcifications in the right breast at 10 o clock",
    "no mammographic evidence of malignancy birads 1 negative",
    "an oval circumscribed mass likely a benign cyst recommend ultrasound",
    "extremely dense breast tissue lowers the sensitivity of mammography",
    "architectural distortion in the left breast biopsy is recommended",
    "stable benign appearing calcifications birads 2 routine screening",
    "fatty breasts with a few benign vascular calcifications",
)


@pytest.fixture(scope="session")
def report_corpus() -> list[str]:
    """A few report-like sentences (lower case, no periods, as the cleaned reports) for tiny tokenizers."""
    return list(REPORT_CORPUS) * 3


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, report_corpus):
    """A tiny BERT (hidden 128, 2 heads = hidden // 64, 2 layers) + WordPiece tokenizer, built offline."""
    from mammoclip.models.text_encoders import build_tiny_bert

    return build_tiny_bert(
        report_corpus,
        tmp_path_factory.mktemp("tiny_bert"),
        vocab_size=300,
        hidden_size=128,
        layers=2,
        heads=2,
        intermediate=256,
        max_position=64,
        seed=0,
    )


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory, tiny_bert_dir):
    """A checkpoint written by this pipeline: timm's tiny test EfficientNet + a tiny BERT."""
    import torch

    from mammoclip.checkpoints import save_clip_checkpoint
    from mammoclip.models.clip import build_clip

    torch.manual_seed(0)
    model, tokenizer = build_clip(
        image_encoder="test_efficientnet",
        text_backbone=str(tiny_bert_dir),
        pretrained_image=False,
        projection_dim=32,
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny-clip.tar"
    save_clip_checkpoint(path, model, metadata={"purpose": "tests"}, tokenizer=tokenizer, epoch=1)
    return path
