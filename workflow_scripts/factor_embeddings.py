import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
stages.factor_embeddings(
    checkpoint=snakemake.input.checkpoint,
    attributes=snakemake.params.attributes,
    embeddings=snakemake.output.embeddings,
    provenance=snakemake.output.provenance,
    text_backbone=snakemake.params.text_backbone,
)
