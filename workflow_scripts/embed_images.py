import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import embed_dataset

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
embed_dataset(
    snakemake.input.manifest,
    snakemake.input.checkpoint,
    snakemake.output.embeddings,
    height=snakemake.params.height,
    width=snakemake.params.width,
    batch_size=snakemake.params.batch_size,
    text_backbone=snakemake.params.text_backbone,
    threads=snakemake.threads,
)
