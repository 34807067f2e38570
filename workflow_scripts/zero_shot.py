import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
stages.zero_shot(
    dataset=snakemake.wildcards.dataset,
    scores=snakemake.input.scores,
    tables={k: v for k, v in snakemake.input.items() if k != "scores"},
    results=snakemake.output.results,
    checkpoint=snakemake.params.checkpoint,
    seed=snakemake.params.seed,
)
