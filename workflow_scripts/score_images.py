import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import score_dataset

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
scores = score_dataset(
    snakemake.input.embeddings,
    snakemake.input.checkpoint,
    prompts=snakemake.params.prompts,
    text_backbone=snakemake.params.text_backbone,
)
scores.to_csv(snakemake.output.scores, index=False)
