# The paper's classification tables (one per protocol), data-efficiency plots and the Snakemake report
# (`snakemake --report report.zip`).

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


# Named targets: one table per protocol, and all of them.
for _protocol in ("paper", "clean"):

    rule:
        name:
            f"table_{_protocol}"
        input:
            f"results/tables/{_protocol}/classification.md",


rule tables:
    input:
        expand(
            "results/tables/{protocol}/classification.md",
            protocol=CLASSIFY["protocols"] if CHECKPOINTS else [],
        ),
