# Lesion detectors (docs/upstream.md#detection): a RetinaNet on the model's image encoder, frozen (freeze)
# or finetuned (ft), per protocol, dataset, label, model, data fraction, fold and seed (rules/common.smk),
# and the detection table of each protocol with its FROC curves and detection panels.


rule detect:
    input:
        unpack(detector_inputs),
    output:
        metrics=f"{DETECT_RUN}/metrics.csv",
        detections=f"{DETECT_RUN}/detections.csv",
        history=f"{DETECT_RUN}/history.csv",
        model=f"{DETECT_RUN}/model.pt",
        provenance=f"{DETECT_RUN}/provenance.json",
    log:
        "logs/detect/{protocol}/{dataset}/{label}/{model}/{mode}_frac{frac}_fold{fold}_seed{seed}.log",
    benchmark:
        "benchmarks/detect/{protocol}/{dataset}/{label}/{model}/{mode}_frac{frac}_fold{fold}_seed{seed}.tsv"
    wildcard_constraints:
        label="|".join(DETECT_LABELS) or "__none__",
        mode="freeze|ft",
    # the longest jobs start before the short classifier jobs, which then fill the other cores
    priority: 10
    conda:
        "../envs/mammoclip.yaml"
    threads: DETECT_THREADS
    resources:
        gpu=DETECT["gpus"],
        mem_mb=grow(DETECT_MEM_MB),
        runtime=grow(detector_runtime),
    params:
        settings=detector_settings,
        precision=DETECT["precision"],
        num_workers=DETECT["num_workers"],
        n_boot=DETECT["n_boot"],
        iou_threshold=DETECT["iou_threshold"],
        paper_model=PAPER_MODEL,
        text_backbone=config["text_backbone"],
    script:
        "../workflow_scripts/detect.py"


rule detection:
    input:
        detection_files("metrics.csv"),


rule detection_table:
    input:
        unpack(detection_table_inputs),
        metrics=lambda wc: detection_files("metrics.csv", protocol=wc.protocol),
        detections=lambda wc: detection_files("detections.csv", protocol=wc.protocol),
        paper_results=PAPER_RESULTS,
    output:
        markdown=report(
            "results/tables/{protocol}/detection.md",
            caption="../report/detection_table.rst",
            category="Tables",
            subcategory="{protocol} protocol",
            labels={"table": "detection", "protocol": "{protocol}"},
        ),
        csv="results/tables/{protocol}/detection.csv",
        froc_plots=[
            report(
                f"results/tables/{{protocol}}/froc_{label}.png",
                caption="../report/froc_plot.rst",
                category="Detection",
                subcategory="{protocol} protocol",
                labels={"figure": "FROC", "label": label, "protocol": "{protocol}"},
            )
            for label in DETECT_PLOT_LABELS
        ],
        panels=[
            report(
                f"results/tables/{{protocol}}/detections_{label}.png",
                caption="../report/detection_panel.rst",
                category="Detection",
                subcategory="{protocol} protocol",
                labels={
                    "figure": "detections",
                    "label": label,
                    "protocol": "{protocol}",
                },
            )
            for label in DETECT_PLOT_LABELS
        ],
    log:
        "logs/tables/detection_{protocol}.log",
    wildcard_constraints:
        protocol="|".join(DETECT["protocols"]) or "__none__",
    conda:
        "../envs/mammoclip.yaml"
    threads: 1
    resources:
        mem_mb=grow(2000),
        runtime=grow(10),
    params:
        paper_model=PAPER_MODEL,
        iou_threshold=DETECT["iou_threshold"],
    script:
        "../workflow_scripts/detection_table.py"


# Named targets: one detection table per protocol, and all of them.
for _protocol in ("paper", "clean"):

    rule:
        name:
            f"table_detection_{_protocol}"
        input:
            f"results/tables/{_protocol}/detection.md",


rule table_detection:
    input:
        expand(
            "results/tables/{protocol}/detection.md",
            protocol=DETECT["protocols"] if DETECTION_RUNS else [],
        ),
