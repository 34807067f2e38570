# VinDr label/box tables and RSNA folds (upstream sections 1.4, 3 and 12).

VINDR_TABLES = {
    "rows": "vindr_detection_v1_folds.csv",
    "images": "vindr_images.csv",
    "boxes": "vindr_boxes.csv",
    "image_labels": "clip_vindr_final.csv",
}


rule vindr_tables:
    input:
        **vindr_box_table_input(),
        breast=lambda wc: SPECS["vindr"].metadata_csv,
        findings=lambda wc: SPECS["vindr"].root
        / config["datasets"]["vindr"]["findings_csv"],
        manifest="results/preprocess/vindr/manifest.csv",
    output:
        **{
            name: f"results/annotations/vindr/{file}"
            for name, file in VINDR_TABLES.items()
        },
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
        folds="results/annotations/rsna/train_folds.csv",
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
            f"results/annotations/{d}/provenance.json"
            for d in ("vindr", "rsna")
            if d in ENABLED_DATASETS
        ],
