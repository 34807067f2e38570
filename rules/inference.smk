# Per-image embeddings (raw and projected) and prompt scores of the configured datasets.
# The model is `pretrained_checkpoint` (e.g. a released Mammo-CLIP checkpoint).


rule embed_images:
    input:
        manifest="results/preprocess/{dataset}/manifest.csv",
        checkpoint=lambda wc: CHECKPOINTS[wc.model],
    output:
        embeddings="results/embeddings/{dataset}/{model}."
        + config["inference"]["embedding_format"],
    log:
        "logs/inference/embed_{dataset}_{model}.log",
    benchmark:
        "benchmarks/inference/embed_{dataset}_{model}.tsv"
    # first among ready jobs: every linear probe and zero-shot job waits for the embeddings
    priority: 50
    conda:
        "../envs/mammoclip.yaml"
    threads: 2
    resources:
        gpu=config["inference"]["gpus"],
        mem_mb=grow(
            lambda wc: sizes.embedding_resources(
                IMAGE_COUNTS[wc.dataset], PIXELS, config["inference"]["gpus"]
            )["mem_mb"]
        ),
        runtime=grow(
            lambda wc: sizes.embedding_resources(
                IMAGE_COUNTS[wc.dataset], PIXELS, config["inference"]["gpus"]
            )["runtime"]
        ),
    params:
        height=config["preprocess"]["height"],
        width=config["preprocess"]["width"],
        batch_size=config["inference"]["batch_size"],
        text_backbone=config["text_backbone"],
    script:
        "../workflow_scripts/embed_images.py"


rule score_images:
    input:
        embeddings=rules.embed_images.output.embeddings,
        checkpoint=lambda wc: CHECKPOINTS[wc.model],
    output:
        scores="results/scores/{dataset}/{model}.csv",
    log:
        "logs/inference/score_{dataset}_{model}.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(lambda wc: dataset_table_resources(wc.dataset)["mem_mb"]),
        runtime=grow(lambda wc: dataset_table_resources(wc.dataset)["runtime"]),
    params:
        prompts=config["inference"]["prompts"],
        text_backbone=config["text_backbone"],
    script:
        "../workflow_scripts/score_images.py"


rule inference:
    input:
        expand(
            "results/scores/{dataset}/{model}.csv",
            dataset=ENABLED_DATASETS,
            model=CHECKPOINTS,
        ),


rule zero_shot:
    input:
        unpack(zero_shot_tables),
        scores="results/scores/{dataset}/{model}.csv",
    output:
        results="results/zeroshot/{dataset}/{model}.csv",
    log:
        "logs/zeroshot/{dataset}_{model}.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(lambda wc: dataset_table_resources(wc.dataset)["mem_mb"]),
        runtime=grow(lambda wc: dataset_table_resources(wc.dataset)["runtime"]),
    params:
        checkpoint=lambda wc: CHECKPOINTS[wc.model],
        seed=config["seed"],
    script:
        "../workflow_scripts/zero_shot.py"


rule zero_shot_all:
    input:
        expand(
            "results/zeroshot/{dataset}/{model}.csv",
            dataset=[
                d
                for d in ENABLED_DATASETS
                if registry.get_dataset(d).zero_shot_evaluator
            ],
            model=CHECKPOINTS,
        ),
