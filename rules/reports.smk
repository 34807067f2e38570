# In-house reports: cleaning, grouping per breast with folds, and back-translation (upstream section 2).


rule prepare_reports:
    input:
        reports=lambda wc: SPECS["inhouse"].metadata_csv,
        manifest="results/preprocess/inhouse/manifest.csv",
    output:
        table="results/reports/inhouse/reports_grouped.csv",
    log:
        "logs/reports/prepare.log",
    conda:
        "../envs/mammoclip.yaml"
    params:
        legacy=config["legacy"],
        folds=config["reports"]["folds"],
    script:
        "../workflow_scripts/prepare_reports.py"


rule augment_reports:
    input:
        table="results/reports/inhouse/reports_grouped.csv",
    output:
        table="results/reports/inhouse/clip_pretrain.csv",
        provenance="results/reports/inhouse/clip_pretrain.provenance.json",
    log:
        "logs/reports/augment.log",
    benchmark:
        "benchmarks/reports/augment.tsv"
    conda:
        "../envs/mammoclip.yaml"
    threads: 2
    params:
        augmentation=config["reports"]["augmentation"],
        legacy=config["legacy"],
        folds=config["reports"]["folds"],
        seed=config["seed"],
    script:
        "../workflow_scripts/augment_reports.py"


rule reports:
    input:
        "results/reports/inhouse/clip_pretrain.csv"
        if "inhouse" in ENABLED_DATASETS
        else [],
