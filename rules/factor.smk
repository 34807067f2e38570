# Mammo-FActOR (docs/upstream.md#mammo-factor): attribute embeddings from the model's text encoder, an
# attribute mapper on its frozen image encoder per (protocol, model, seed), heatmaps of the VinDr test
# images with their localisation scores, and the localisation table of each protocol with heatmap overlays.


rule factor_embeddings:
    input:
        checkpoint=lambda wc: CHECKPOINTS[wc.model],
    output:
        embeddings="results/factor/{model}/attribute_embeddings.npz",
        provenance="results/factor/{model}/attribute_embeddings.json",
    log:
        "logs/factor/{model}/attribute_embeddings.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(4000),
        runtime=grow(10),
    params:
        attributes=FACTOR["attributes"],
        text_backbone=config["text_backbone"],
    script:
        "../workflow_scripts/factor_embeddings.py"


rule factor_train:
    input:
        unpack(factor_inputs),
    output:
        mapper=f"{FACTOR_RUN}/mapper.pt",
        history=f"{FACTOR_RUN}/history.csv",
        provenance=f"{FACTOR_RUN}/mapper.json",
    log:
        "logs/factor/{protocol}/{model}/seed{seed}_train.log",
    benchmark:
        "benchmarks/factor/{protocol}/{model}/seed{seed}_train.tsv"
    wildcard_constraints:
        protocol="paper|clean",
    conda:
        "../envs/mammoclip.yaml"
    threads: FACTOR_THREADS
    resources:
        gpu=FACTOR["gpus"],
        mem_mb=grow(FACTOR_MEM_MB),
        runtime=grow(FACTOR_RUNTIME_MIN),
    params:
        settings={k: FACTOR[k] for k in FACTOR_TRAINING_KEYS},
        legacy=config["legacy"],
        text_backbone=config["text_backbone"],
        num_workers=FACTOR["num_workers"],
    script:
        "../workflow_scripts/factor_train.py"


rule factor_localise:
    input:
        unpack(factor_inputs),
        mapper=f"{FACTOR_RUN}/mapper.pt",
    output:
        heatmaps=f"{FACTOR_RUN}/heatmaps.npz",
        per_image=f"{FACTOR_RUN}/localisation_per_image.csv",
        metrics=f"{FACTOR_RUN}/metrics.csv",
        provenance=f"{FACTOR_RUN}/localisation.json",
    log:
        "logs/factor/{protocol}/{model}/seed{seed}_localise.log",
    benchmark:
        "benchmarks/factor/{protocol}/{model}/seed{seed}_localise.tsv"
    wildcard_constraints:
        protocol="paper|clean",
    conda:
        "../envs/mammoclip.yaml"
    threads: FACTOR_THREADS
    resources:
        gpu=FACTOR["gpus"],
        mem_mb=grow(FACTOR_MEM_MB),
        runtime=grow(30),
    params:
        settings={k: FACTOR[k] for k in FACTOR_EVALUATION_KEYS},
        paper_model=PAPER_MODEL,
        text_backbone=config["text_backbone"],
        num_workers=FACTOR["num_workers"],
    script:
        "../workflow_scripts/factor_localise.py"


rule localisation_table:
    input:
        **registry.get_dataset("vindr").detection_inputs(),
        metrics=lambda wc: factor_files("metrics.csv", protocol=wc.protocol),
        per_image=lambda wc: factor_files(
            "localisation_per_image.csv", protocol=wc.protocol
        ),
        heatmaps=lambda wc: factor_files("heatmaps.npz", protocol=wc.protocol),
        paper_results=PAPER_RESULTS,
    output:
        markdown=report(
            "results/tables/{protocol}/localisation.md",
            caption="../report/localisation_table.rst",
            category="Tables",
            subcategory="{protocol} protocol",
            labels={"table": "localisation", "protocol": "{protocol}"},
        ),
        csv="results/tables/{protocol}/localisation.csv",
        overlays=[
            report(
                f"results/tables/{{protocol}}/heatmaps_{attribute}.png",
                caption="../report/heatmap_panel.rst",
                category="Mammo-FActOR",
                subcategory="{protocol} protocol",
                labels={
                    "figure": "heatmaps",
                    "attribute": attribute,
                    "protocol": "{protocol}",
                },
            )
            for attribute in FACTOR_ATTRIBUTES
        ],
    log:
        "logs/tables/localisation_{protocol}.log",
    wildcard_constraints:
        protocol="|".join(FACTOR["protocols"]) or "__none__",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    params:
        percentile=FACTOR["percentile"],
        n_overlays=FACTOR["overlays"],
    script:
        "../workflow_scripts/localisation_table.py"


rule factor:
    input:
        expand(
            "results/tables/{protocol}/localisation.md",
            protocol=FACTOR["protocols"] if FACTOR_RUNS else [],
        ),
