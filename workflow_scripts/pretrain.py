import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import pretraining_params
from mammoclip.train.run import launch_pretraining

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = pretraining_params(
    dict(snakemake.input),
    snakemake.params.settings,
    text_backbone=snakemake.params.text_backbone,
    height=snakemake.params.height,
    width=snakemake.params.width,
    legacy=snakemake.params.legacy,
    seed=snakemake.params.seed,
    out_dir=snakemake.params.run_dir,
    threads=snakemake.threads,
)
launch_pretraining(
    params,
    gpus=snakemake.resources.gpu,
    checkpoint=snakemake.output.checkpoint,
    metrics=snakemake.output.metrics,
)
