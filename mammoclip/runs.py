"""The key of one downstream classifier run, and the classifier modes (no heavy imports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MODES", "RunKey"]

#: ``mode`` wildcard value -> :data:`mammoclip.train.classify.MODES` name
MODES: Mapping[str, str] = {"lp": "linear_probe", "ft": "finetune"}


@dataclass(frozen=True)
class RunKey:
    """One classifier run: (protocol, dataset, label, model, mode, data fraction, fold, seed)."""

    protocol: str
    dataset: str
    label: str
    model: str
    mode: str  # a :data:`MODES` key
    fraction: float
    fold: int
    seed: int

    @classmethod
    def from_wildcards(cls, wildcards: Mapping[str, Any]) -> RunKey:
        """From the ``classify`` rule's wildcards (strings; the fraction is the ``frac`` wildcard)."""
        return cls(
            protocol=wildcards["protocol"],
            dataset=wildcards["dataset"],
            label=wildcards["label"],
            model=wildcards["model"],
            mode=wildcards["mode"],
            fraction=float(wildcards["frac"]),
            fold=int(wildcards["fold"]),
            seed=int(wildcards["seed"]),
        )

    def record(self, *, paper_model: str = "") -> dict[str, Any]:
        """The run's key columns as its metrics and provenance write them (``setting`` = mode,
        ``data_frac`` = fraction: the output files' column names)."""
        return {
            "dataset": self.dataset,
            "label": self.label,
            "setting": self.mode,
            "data_frac": float(self.fraction),
            "model": self.model,
            "paper_model": paper_model,
            "protocol": self.protocol,
            "fold": int(self.fold),
            "seed": int(self.seed),
        }
