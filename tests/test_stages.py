"""mammoclip.stages: one stage function per Snakemake rule, called by that rule's script and nothing else;
stages run without Snakemake on tiny inputs and write every output of their rule."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mammoclip import stages

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "workflow_scripts"
#: the rules that run a script, in the order of the DAG (and of mammoclip/stages.py)
DAG_ORDER = [
    "phantom",
    "convert_shard",
    "join_manifest",
    "vindr_tables",
    "rsna_folds",
    "prepare_reports",
    "augment_reports",
    "tiny_text_model",
    "pretrain",
    "embed_images",
    "score_images",
    "zero_shot",
    "classify",
    "classification_table",
    "roc_plot",
    "detect",
    "detection_table",
    "factor_embeddings",
    "factor_train",
    "factor_localise",
    "localisation_table",
]


def _rule_scripts() -> dict[str, str]:
    """``{rule name (pattern for rules made in a loop): script stem}`` from rules/*.smk."""
    found = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        name = None
        lines = smk.read_text().splitlines()
        for i, line in enumerate(lines):
            if match := re.match(r"^\s*rule (\w+):", line):
                name = match.group(1)
            elif re.match(r"^\s*rule:", line):
                name = None
            elif re.match(r"^\s*name:\s*$", line):
                name = re.sub(r"\{[^}]*\}", "*", lines[i + 1].strip().removeprefix("f").strip("\"'"))
            elif re.match(r"^\s*script:\s*$", line):
                script = lines[i + 1].strip().strip("\"'")
                found[name] = Path(script).stem
    return found


@pytest.fixture(scope="module")
def rule_names(tmp_path_factory) -> list[str]:
    workdir = tmp_path_factory.mktemp("rules")
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    result = subprocess.run(
        [snakemake, "--list-rules", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return result.stdout.split()


def test_every_rule_with_a_script_has_the_stage_of_its_name(rule_names):
    scripts = _rule_scripts()
    assert sorted(set(scripts.values())) == sorted(DAG_ORDER)
    with_scripts = []
    for rule in rule_names:
        matches = [
            stem for pattern, stem in scripts.items() if re.fullmatch(pattern.replace("*", r"\w+"), rule)
        ]
        if matches:
            (stem,) = matches
            # the script, the stage and the rule share one name (phantom_{dataset} -> phantom)
            assert rule == stem or rule.startswith(f"{stem}_"), rule
            assert callable(getattr(stages, stem)), stem
            with_scripts.append(rule)
    expected = {"phantom_vindr", "phantom_rsna", "phantom_inhouse", "classify", "pretrain", "detect"}
    assert expected | {"detection_table"} <= set(with_scripts)


def test_stages_are_defined_in_dag_order_and_keyword_only():
    source = inspect.getsource(stages)
    positions = [source.index(f"\ndef {name}(") for name in DAG_ORDER]
    assert positions == sorted(positions)
    for name in DAG_ORDER:
        parameters = inspect.signature(getattr(stages, name)).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters), name


@pytest.mark.parametrize("stem", DAG_ORDER)
def test_each_script_only_unpacks_snakemake_and_calls_its_stage(stem):
    tree = ast.parse((SCRIPTS / f"{stem}.py").read_text())
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "stages"
        and node.func.attr[0].islower()
    ]
    assert calls == [stem]
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {
        "_bootstrap",
        "mammoclip.stages",
        "mammoclip.logs.log_to_file",
        "mammoclip.runs.RunKey",
    }
    # no loop, no function, no branch: unpacking only
    assert not any(isinstance(n, ast.For | ast.While | ast.If | ast.FunctionDef) for n in ast.walk(tree))
    assert "log_to_file(snakemake.log[0])" in ast.unparse(tree)


# ---- the stages on tiny inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsna_run(tmp_path_factory):
    """phantom -> convert_shard (2 shards) -> join_manifest -> rsna_folds on a 6-patient RSNA phantom."""
    from mammoclip.config import load_config
    from mammoclip.datasets import resolve_dataset

    root = tmp_path_factory.mktemp("stages")
    config = load_config({"seed": 3})
    phantoms = root / "resources" / "phantoms"
    truth = stages.phantom(
        dataset="rsna",
        out_dir=phantoms / "rsna",
        size=6,
        image_scale=0.05,
        seed=3,
        transfer_syntaxes=["uncompressed"],
        options={},
    )
    spec = resolve_dataset("rsna", config["datasets"]["rsna"], phantoms)
    out = root / "results"
    shards = []
    for shard in range(2):
        shards.append(out / f"shard{shard}.csv")
        stages.convert_shard(
            spec=spec.to_params(),
            shard=shard,
            n_shards=2,
            png_root=out / "png",
            width=40,
            height=64,
            legacy=False,
            processes=1,
            manifest=shards[-1],
        )
    stages.join_manifest(
        shards=shards,
        manifest=out / "manifest.csv",
        provenance=out / "manifest.provenance.json",
        spec=spec.to_params(),
        max_failed_fraction=0.0,
        seed=3,
        width=40,
        height=64,
        legacy=False,
    )
    stages.rsna_folds(
        train=spec.metadata_csv,
        manifest=out / "manifest.csv",
        train_folds=out / "train_folds.csv",
        provenance=out / "provenance.json",
        folds=3,
        fold_file=None,
        seed=3,
    )
    return {"root": root, "out": out, "truth": truth, "spec": spec}


def test_phantom_writes_the_registry_metadata_files(rsna_run):
    folder = rsna_run["root"] / "resources" / "phantoms" / "rsna"
    for name in ("train.csv", "phantom_truth.csv", "phantom_lesions.csv"):
        assert (folder / name).is_file(), name
    assert len(rsna_run["truth"]) == len(pd.read_csv(folder / "train.csv"))


def test_preprocessing_stages_write_shards_manifest_and_provenance(rsna_run):
    out = rsna_run["out"]
    shards = [pd.read_csv(out / f"shard{i}.csv", dtype=str) for i in range(2)]
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert len(manifest) == sum(map(len, shards)) == len(rsna_run["truth"])
    assert (manifest["status"] == "ok").all()
    assert all(Path(p).is_file() for p in manifest["png_path"])
    record = json.loads((out / "manifest.provenance.json").read_text())
    assert {k: record[k] for k in ("stage", "dataset", "source", "images", "failed", "seed")} == {
        "stage": "preprocess",
        "dataset": "rsna",
        "source": "phantom",
        "images": len(manifest),
        "failed": 0,
        "seed": 3,
    }
    assert {"code_version", "python", "width", "height", "legacy", "data_root", "metadata_csv"} <= set(record)


def test_rsna_folds_stage_writes_the_fold_table_and_provenance(rsna_run):
    out = rsna_run["out"]
    folds = pd.read_csv(out / "train_folds.csv", dtype={"patient_id": str, "image_id": str})
    assert set(folds["fold"]) == {0, 1, 2} and folds["png_path"].notna().all()
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()
    record = json.loads((out / "provenance.json").read_text())
    assert record["stage"] == "annotations" and record["dataset"] == "rsna"
    assert record["images"] == len(folds) and record["folds"] == 3 and record["fold_file"] is None
    assert record["data"] == [str(rsna_run["spec"].metadata_csv), str(out / "manifest.csv")]


def test_zero_shot_stage_evaluates_with_the_registry_evaluator(rsna_run, tmp_path):
    folds = pd.read_csv(rsna_run["out"] / "train_folds.csv", dtype={"patient_id": str, "image_id": str})
    scores = pd.concat(
        [
            pd.DataFrame(
                {
                    "image_id": folds["image_id"],
                    "task": "malignancy",
                    "class": name,
                    "probability": probability,
                }
            )
            for name, probability in (
                ("no cancer", 1 - folds["cancer"] * 0.6),
                ("cancer", folds["cancer"] * 0.6),
            )
        ]
    )
    scores.to_csv(tmp_path / "scores.csv", index=False)
    results = stages.zero_shot(
        dataset="rsna",
        scores=tmp_path / "scores.csv",
        tables={"folds": rsna_run["out"] / "train_folds.csv"},
        results=tmp_path / "zeroshot.csv",
        checkpoint="model.tar",
        seed=0,
    )
    written = pd.read_csv(tmp_path / "zeroshot.csv")
    assert len(written) == len(results) == 4 and set(written["dataset"]) == {"rsna"}
    assert set(written["checkpoint"]) == {"model.tar"} and set(written["protocol"]) == {"paper", "clean"}
    with pytest.raises(ValueError, match="no zero-shot labels for dataset 'inhouse'"):
        stages.zero_shot(dataset="inhouse", scores="", tables={}, results="", checkpoint="", seed=0)
