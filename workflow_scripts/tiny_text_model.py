import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.train.run import build_text_model

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
build_text_model(
    snakemake.input.reports,
    snakemake.output.model,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
)
