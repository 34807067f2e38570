import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.embed_images(
    manifest=snakemake.input.manifest,
    checkpoint=snakemake.input.checkpoint,
    embeddings=snakemake.output.embeddings,
    height=params.height,
    width=params.width,
    batch_size=params.batch_size,
    text_backbone=params.text_backbone,
    threads=snakemake.threads,
)
