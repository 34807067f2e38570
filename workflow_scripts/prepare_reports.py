import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.annotations.reports import write_pretraining_table
from mammoclip.logs import log_to_file
from mammoclip.pipeline import prepare_report_table

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
table = prepare_report_table(
    snakemake.input.reports,
    snakemake.input.manifest,
    legacy=snakemake.params.legacy,
    n_folds=snakemake.params.folds,
)
write_pretraining_table(table, snakemake.output.table)
