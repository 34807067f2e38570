# DICOM -> PNG conversion (docs/upstream.md#preprocessing), sharded; a manifest row per image records the
# crop box in original pixels (for mapping boxes later), status and reason.


rule convert_shard:
    input:
        metadata=metadata_csv,
    output:
        manifest="results/preprocess/{dataset}/shards/{shard}.csv",
    log:
        "logs/preprocess/{dataset}/shard_{shard}.log",
    benchmark:
        "benchmarks/preprocess/{dataset}/shard_{shard}.tsv"
    conda:
        "../envs/mammoclip.yaml"
    threads: 2  # worker processes inside the job
    resources:
        mem_mb=grow(
            lambda wc, threads: sizes.conversion_resources(
                IMAGE_COUNTS[wc.dataset], len(SHARDS), threads
            )["mem_mb"]
        ),
        runtime=grow(
            lambda wc, threads: sizes.conversion_resources(
                IMAGE_COUNTS[wc.dataset], len(SHARDS), threads
            )["runtime"]
        ),
    params:
        spec=dataset_spec,
        n_shards=len(SHARDS),
        png_root=lambda wc: f"results/png/{wc.dataset}",
        width=config["preprocess"]["width"],
        height=config["preprocess"]["height"],
        legacy=config["legacy"],
    script:
        "../workflow_scripts/convert_shard.py"


rule join_manifest:
    input:
        shards=expand("results/preprocess/{{dataset}}/shards/{shard}.csv", shard=SHARDS),
    output:
        manifest="results/preprocess/{dataset}/manifest.csv",
        provenance="results/preprocess/{dataset}/manifest.provenance.json",
    log:
        "logs/preprocess/{dataset}/join.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(lambda wc: dataset_table_resources(wc.dataset)["mem_mb"]),
        runtime=grow(lambda wc: dataset_table_resources(wc.dataset)["runtime"]),
    params:
        spec=dataset_spec,
        max_failed_fraction=config["preprocess"]["max_failed_fraction"],
        seed=config["seed"],
        width=config["preprocess"]["width"],
        height=config["preprocess"]["height"],
        legacy=config["legacy"],
    script:
        "../workflow_scripts/join_manifest.py"


rule preprocess:
    input:
        expand("results/preprocess/{dataset}/manifest.csv", dataset=ENABLED_DATASETS),
