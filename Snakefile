# mammoclip: Mammo-CLIP (Ghosh et al., MICCAI 2024, arXiv 2405.12255) from raw DICOMs to the paper's tables.
# Demo:  snakemake --cores 2          (phantom data, config/config.yaml)
# Paper: snakemake --configfile config/paper.yaml --profile slurm
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/phantoms.smk"
include: "rules/preprocess.smk"
include: "rules/annotations.smk"
include: "rules/reports.smk"
include: "rules/pretrain.smk"
include: "rules/inference.smk"
include: "rules/classify.smk"
include: "rules/tables.smk"
include: "rules/detect.smk"
include: "rules/factor.smk"


rule all:
    default_target: True
    input:
        rules.preprocess.input,
        rules.annotations.input,
        rules.reports.input,
        rules.pretraining.input,
        rules.inference.input,
        rules.zero_shot_all.input,
        rules.classification.input,
        rules.tables.input,
        rules.detection.input,
        rules.table_detection.input,
        rules.factor.input,
