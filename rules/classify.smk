# Downstream classifiers (docs/upstream.md#classifiers): linear probe (lp) and finetune (ft) of the model's
# image encoder, per protocol, dataset, label, model, data fraction, fold and seed (rules/common.smk).


wildcard_constraints:
    protocol="paper|clean",
    label="|".join(CLASSIFY_LABELS) or "__none__",
    mode="lp|ft",
    frac=r"[0-9.e-]+",
    fold=r"\d+",
    seed=r"\d+",


rule classify:
    input:
        unpack(classifier_inputs),
    output:
        metrics=f"{CLASSIFY_RUN}/metrics.csv",
        predictions=f"{CLASSIFY_RUN}/predictions.csv",
        history=f"{CLASSIFY_RUN}/history.csv",
        model=f"{CLASSIFY_RUN}/model.pt",
        provenance=f"{CLASSIFY_RUN}/provenance.json",
    log:
        "logs/classify/{protocol}/{dataset}/{label}/{model}/{mode}_frac{frac}_fold{fold}_seed{seed}.log",
    benchmark:
        "benchmarks/classify/{protocol}/{dataset}/{label}/{model}/{mode}_frac{frac}_fold{fold}_seed{seed}.tsv"
    conda:
        "../envs/mammoclip.yaml"
    threads: CLASSIFY_THREADS
    resources:
        gpu=CLASSIFY["gpus"],
        mem_mb=grow(CLASSIFY_MEM_MB),
        runtime=grow(classifier_runtime),
    params:
        settings=classifier_settings,
        augment=CLASSIFY["augment"],
        precision=CLASSIFY["precision"],
        num_workers=CLASSIFY["num_workers"],
        n_boot=CLASSIFY["n_boot"],
        paper_model=PAPER_MODEL,
        height=config["preprocess"]["height"],
        width=config["preprocess"]["width"],
        text_backbone=config["text_backbone"],
    script:
        "../workflow_scripts/classify.py"


rule classification:
    input:
        classification_files("metrics.csv"),
