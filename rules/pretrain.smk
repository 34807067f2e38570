# CLIP pretraining (docs/upstream.md#pretraining): skipped when `pretrained_checkpoint` is set.


rule tiny_text_model:
    input:
        reports="results/reports/inhouse/clip_pretrain.csv",
    output:
        model=directory("results/pretrain/text-model"),
    log:
        "logs/pretrain/text_model.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    params:
        settings={
            **config["pretrain"]["tiny_text_model"],
            "extra_prompts": [
                p
                for task in config["inference"]["prompts"].values()
                for prompts in task.values()
                for p in prompts
            ],
        },
        seed=config["seed"],
    script:
        "../workflow_scripts/tiny_text_model.py"


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        checkpoint=protected("results/pretrain/model-best.tar"),
        metrics="results/pretrain/metrics.csv",
    log:
        "logs/pretrain/pretrain.log",
    benchmark:
        "benchmarks/pretrain/pretrain.tsv"
    conda:
        "../envs/mammoclip.yaml"
    threads: PRETRAIN_THREADS
    resources:
        gpu=config["pretrain"]["gpus"],
        mem_mb=grow(PRETRAIN_MEM_MB),
        runtime=grow(PRETRAIN_RUNTIME_MIN),
    params:
        settings={
            k: v
            for k, v in config["pretrain"].items()
            if k not in ("gpus", "tiny_text_model")
        },
        text_backbone=config["text_backbone"],
        height=config["preprocess"]["height"],
        width=config["preprocess"]["width"],
        legacy=config["legacy"],
        seed=config["seed"],
        # training state (last.pt, best checkpoint, metrics, TensorBoard) lives here, outside the outputs
        # that Snakemake deletes when a job is interrupted, so a rerun resumes
        run_dir="results/pretrain/run",
    script:
        "../workflow_scripts/pretrain.py"


rule pretraining:
    input:
        rules.pretrain.output.checkpoint if PRETRAIN else [],
