import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.pretrain(
    inputs=stages.PretrainInputs(**dict(snakemake.input.items())),
    checkpoint=snakemake.output.checkpoint,
    metrics=snakemake.output.metrics,
    settings=params.settings,
    text_backbone=params.text_backbone,
    height=params.height,
    width=params.width,
    legacy=params.legacy,
    seed=params.seed,
    run_dir=params.run_dir,
    threads=snakemake.threads,
    gpus=snakemake.resources.gpu,
)
