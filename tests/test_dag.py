"""The paper configuration's whole DAG resolves (dry run, no job runs) with the expected jobs, on the
real-scale rehearsal of the datasets' metadata files (:mod:`mammoclip.phantoms.realscale`); the demo's DAG
has the report's figure jobs."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from mammoclip.bench import benchmark_dag

ROOT = Path(__file__).resolve().parent.parent


def test_paper_config_dag_has_every_run(tmp_path):
    result = benchmark_dag(
        ROOT / "Snakefile",
        ROOT / "config/paper.yaml",
        tmp_path,
        repeats=1,
        snakemake=str(Path(sys.executable).with_name("snakemake")),
    )
    # classifiers: VinDr 3 labels x (paper: lp 0.1/0.5/1 + ft 1 = 4; clean: 5 folds x 4) + RSNA cancer
    # (paper: lp 1 + ft 0.1/0.5/1 = 4; clean: 4 folds x 4), each x 3 seeds = (72 + 20) x 3 = 276;
    # detectors: 2 labels x (freeze 1 + ft 0.1/0.5/1 = 4) x 2 protocols (one fold each) x 3 seeds = 48;
    # Mammo-FActOR: attribute embeddings + 2 protocols x 3 seeds x (mapper + scoring) + 2 tables = 15;
    # ROC figures: 2 protocols x 3 binary labels (Mass, Suspicious_Calcification, cancer) = 6;
    # conversion 3 x 64 shards = 192; 21 others (joins, classification and detection tables, pretraining,
    # inference, zero-shot, all)
    assert result["jobs"] == 276 + 48 + 15 + 6 + 192 + 21
    # the roots held the real files' layout, not only their row counts
    findings = pd.read_csv(tmp_path / "data/vindr/finding_annotations.csv", dtype=str)
    assert findings.shape == (20_486, 16) and findings["xmin"].notna().sum() == 2_254
    assert pd.read_csv(tmp_path / "data/rsna/train.csv", dtype=str).shape == (54_706, 14)


def _planned_outputs(workdir: Path, *targets: str) -> dict[str, list[str]]:
    """``{rule: [output, ...]}`` of a dry run of the demo config in ``workdir``."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", "-s", str(ROOT / "Snakefile")]
        + ["-d", str(workdir), "--cores", "1", *targets],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    jobs: dict[str, list[str]] = {}
    for block in result.stdout.split("\nrule ")[1:]:
        output = re.search(r"output: (.*)", block)
        jobs.setdefault(block.split(":", 1)[0].strip(), []).append(output.group(1) if output else "")
    return jobs


def test_demo_dag_has_a_roc_figure_per_protocol_and_binary_label(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    expected = {
        f"results/tables/{protocol}/roc_{label}.png"
        for protocol in ("paper", "clean")
        for label in ("Mass", "Suspicious_Calcification", "cancer")  # density is multiclass: no ROC
    }
    assert set(_planned_outputs(tmp_path)["roc_plot"]) == expected  # the default target, `all`
    assert set(_planned_outputs(tmp_path, "tables")["roc_plot"]) == expected
    clean = _planned_outputs(tmp_path, "table_clean")
    assert set(clean["roc_plot"]) == {p for p in expected if "/clean/" in p}
    assert clean["classification_table"] == [
        "results/tables/clean/classification.md, results/tables/clean/classification.csv, "
        + ", ".join(
            f"results/tables/clean/efficiency_{label}.png"
            for label in ("Mass", "Suspicious_Calcification", "density", "cancer")
        )
    ]
