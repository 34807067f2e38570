"""The labels of the paper's classification tables and their datasets (no heavy imports: the Snakefile
reads this while it builds the DAG)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LABELS", "MODES", "LabelSpec"]


@dataclass(frozen=True)
class LabelSpec:
    dataset: str
    n_classes: int  # 1 = binary (one logit)


LABELS: Mapping[str, LabelSpec] = {
    "Mass": LabelSpec("vindr", 1),
    "Suspicious_Calcification": LabelSpec("vindr", 1),
    "density": LabelSpec("vindr", 4),
    "cancer": LabelSpec("rsna", 1),
}
#: wildcard value -> :data:`mammoclip.train.classify.MODES` name
MODES: Mapping[str, str] = {"lp": "linear_probe", "ft": "finetune"}
