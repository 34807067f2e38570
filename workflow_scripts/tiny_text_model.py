import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
stages.tiny_text_model(
    reports=snakemake.input.reports,
    model=snakemake.output.model,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
)
