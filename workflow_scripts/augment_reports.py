import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.augment_reports(
    grouped=snakemake.input.table,
    table=snakemake.output.table,
    provenance=snakemake.output.provenance,
    augmentation=params.augmentation,
    legacy=params.legacy,
    folds=params.folds,
    seed=params.seed,
)
