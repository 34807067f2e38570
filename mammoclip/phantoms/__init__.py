"""Deterministic synthetic (phantom) mammography datasets in the layouts of VinDr-Mammo, RSNA and an
in-house image+report collection. See :mod:`mammoclip.phantoms.generate` for layouts, truth tables and
box conventions, :mod:`mammoclip.phantoms.anatomy` for the drawing model."""

from .generate import (
    DEFAULT_TRANSFER_SYNTAXES,
    INHOUSE_COLUMNS,
    LESIONS_CSV,
    RSNA_COLUMNS,
    TRUTH_CSV,
    VINDR_BREAST_COLUMNS,
    VINDR_FINDING_COLUMNS,
    generate_inhouse,
    generate_rsna,
    generate_vindr,
    image_rng,
)

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "INHOUSE_COLUMNS",
    "LESIONS_CSV",
    "RSNA_COLUMNS",
    "TRUTH_CSV",
    "VINDR_BREAST_COLUMNS",
    "VINDR_FINDING_COLUMNS",
    "generate_inhouse",
    "generate_rsna",
    "generate_vindr",
    "image_rng",
]
