"""The paper configuration's whole DAG resolves (dry run, no job runs) with the expected jobs, on the
real-scale rehearsal of the datasets' metadata files (:mod:`mammoclip.phantoms.realscale`)."""

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
    # conversion 3 x 64 shards = 192; 21 others (joins, classification and detection tables, pretraining,
    # inference, zero-shot, all)
    assert result["jobs"] == 276 + 48 + 15 + 192 + 21
    # the roots held the real files' layout, not only their row counts
    findings = pd.read_csv(tmp_path / "data/vindr/finding_annotations.csv", dtype=str)
    assert findings.shape == (20_486, 16) and findings["xmin"].notna().sum() == 2_254
    assert pd.read_csv(tmp_path / "data/rsna/train.csv", dtype=str).shape == (54_706, 14)
