# Annotation tables, one rule per dataset; the tables each writes are its registry entry's
# `annotation_tables` (docs/upstream.md#vindr-annotations, #rsna).

if config["annotations"]["vindr_box_table"] and (
    "vindr" not in ENABLED_DATASETS or config["datasets"]["vindr"]["source"] != "png"
):
    raise WorkflowError(
        "config key 'annotations.vindr_box_table' is for the authors' PNG release "
        "(datasets.vindr.source: png); with converted DICOMs the boxes are mapped with the manifest's "
        "crop boxes (set legacy: true for upstream's arithmetic)"
    )


rule vindr_tables:
    input:
        **vindr_box_table_input(),
        breast=lambda wc: SPECS["vindr"].metadata_csv,
        findings=lambda wc: SPECS["vindr"].root
        / config["datasets"]["vindr"]["findings_csv"],
        manifest="results/preprocess/vindr/manifest.csv",
    output:
        **registry.get_dataset("vindr").annotation_outputs(),
        provenance="results/annotations/vindr/provenance.json",
    log:
        "logs/annotations/vindr.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(dataset_table_resources("vindr")["mem_mb"]),
        runtime=grow(dataset_table_resources("vindr")["runtime"]),
    params:
        folds=config["annotations"]["vindr_validation_folds"],
        seed=config["seed"],
        legacy=config["legacy"],
    script:
        "../workflow_scripts/vindr_tables.py"


rule rsna_folds:
    input:
        train=lambda wc: SPECS["rsna"].metadata_csv,
        manifest="results/preprocess/rsna/manifest.csv",
    output:
        **registry.get_dataset("rsna").annotation_outputs(),
        provenance="results/annotations/rsna/provenance.json",
    log:
        "logs/annotations/rsna.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(dataset_table_resources("rsna")["mem_mb"]),
        runtime=grow(dataset_table_resources("rsna")["runtime"]),
    params:
        folds=config["annotations"]["rsna_folds"],
        fold_file=config["annotations"]["rsna_fold_file"],
        seed=config["seed"],
    script:
        "../workflow_scripts/rsna_folds.py"


rule annotations:
    input:
        [
            registry.get_dataset(d).annotation_provenance
            for d in ENABLED_DATASETS
            if registry.get_dataset(d).annotation_tables
        ],
