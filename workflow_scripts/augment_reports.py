import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.annotations.reports import write_pretraining_table
from mammoclip.logs import log_to_file
from mammoclip.pipeline import augment_report_table
from mammoclip.provenance import write_provenance

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
options = snakemake.params.augmentation
table = augment_report_table(snakemake.input.table, seed=snakemake.params.seed, **options)
write_pretraining_table(table, snakemake.output.table)
write_provenance(
    snakemake.output.provenance,
    stage="reports",
    data=snakemake.input.table,
    legacy=snakemake.params.legacy,
    folds=snakemake.params.folds,
    augmentation=options,
    seed=snakemake.params.seed,
    rows=len(table),
)
