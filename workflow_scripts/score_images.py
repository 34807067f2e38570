import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
stages.score_images(
    embeddings=snakemake.input.embeddings,
    checkpoint=snakemake.input.checkpoint,
    scores=snakemake.output.scores,
    prompts=snakemake.params.prompts,
    text_backbone=snakemake.params.text_backbone,
)
