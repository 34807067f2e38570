import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
stages.prepare_reports(
    reports=snakemake.input.reports,
    manifest=snakemake.input.manifest,
    table=snakemake.output.table,
    legacy=snakemake.params.legacy,
    folds=snakemake.params.folds,
)
