# The paper's classification tables (one per protocol), data-efficiency plots, ROC curves and the
# Snakemake report (`snakemake --report report.zip`).

# {label: dataset} of the labels with lp/ft runs, one data-efficiency plot each
TABLE_PLOTS = {
    label: registry.get_label(label).dataset
    for label, settings in CLASSIFY_LABELS.items()
    if any(settings["fractions"].values())
}


rule classification_table:
    input:
        classification=lambda wc: classification_files(
            "metrics.csv", protocol=wc.protocol
        ),
        zero_shot=rules.zero_shot_all.input,
        paper_results=PAPER_RESULTS,
    output:
        markdown=report(
            "results/tables/{protocol}/classification.md",
            caption="../report/classification_table.rst",
            category="Tables",
            subcategory="{protocol} protocol",
            labels={"table": "classification", "protocol": "{protocol}"},
        ),
        csv="results/tables/{protocol}/classification.csv",
        plots=[
            report(
                f"results/tables/{{protocol}}/efficiency_{label}.png",
                caption="../report/efficiency_plot.rst",
                category="Data efficiency",
                subcategory="{protocol} protocol",
                labels={"label": label, "protocol": "{protocol}"},
            )
            for label in TABLE_PLOTS
        ],
    log:
        "logs/tables/classification_{protocol}.log",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    params:
        plot_datasets=TABLE_PLOTS,
        model_of={path: name for name, path in CHECKPOINTS.items()},
        paper_model=PAPER_MODEL,
    script:
        "../workflow_scripts/classification_table.py"


# ROC curves of one binary label under one protocol: zero-shot, linear probe and finetune at 100 % data, on
# the rows the classification table evaluates (mammoclip/evaluate/roc.py).
rule roc_plot:
    input:
        unpack(roc_inputs),
    output:
        plot=report(
            "results/tables/{protocol}/roc_{label}.png",
            caption="../report/roc_plot.rst",
            category="ROC curves",
            subcategory="{protocol} protocol",
            labels={"label": "{label}", "protocol": "{protocol}"},
        ),
    log:
        "logs/tables/roc_{protocol}_{label}.log",
    benchmark:
        "benchmarks/tables/roc_{protocol}_{label}.tsv"
    wildcard_constraints:
        label="|".join(ROC_LABELS) or "__none__",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    params:
        runs=roc_runs,
        models=list(CHECKPOINTS),
    script:
        "../workflow_scripts/roc_plot.py"


# Named targets: one table (and its ROC figures) per protocol, and all of them.
for _protocol in ("paper", "clean"):

    rule:
        name:
            f"table_{_protocol}"
        input:
            f"results/tables/{_protocol}/classification.md",
            roc_plots(_protocol),


rule tables:
    input:
        expand(
            "results/tables/{protocol}/classification.md",
            protocol=CLASSIFY["protocols"] if CHECKPOINTS else [],
        ),
        roc_plots(),
