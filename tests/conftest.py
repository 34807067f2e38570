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
