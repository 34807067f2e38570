# In-house reports: cleaning, grouping per breast with folds, and back-translation
# (docs/upstream.md#reports).


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
    threads: 1
    resources:
        mem_mb=grow(dataset_table_resources("inhouse")["mem_mb"]),
        runtime=grow(dataset_table_resources("inhouse")["runtime"]),
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
    resources:
        gpu=BACK_TRANSLATION_GPUS,
        mem_mb=grow(8000 if BACK_TRANSLATION_GPUS else 4000),
        # two Marian passes per report sentence: ~0.05 s on a GPU, ~1 s on CPUs
        runtime=grow(
            10
            + int(
                IMAGE_COUNTS.get("inhouse", 1000)
                * (0.05 if BACK_TRANSLATION_GPUS else 1.0)
                * 2
                / 60
            )
        ),
    params:
        # the GPU count is a job resource, not a setting of the translation
        augmentation={
            k: v for k, v in config["reports"]["augmentation"].items() if k != "gpus"
        },
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
