import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.annotations.tables import write_table
from mammoclip.logs import log_to_file
from mammoclip.pipeline import prepare_rsna_folds
from mammoclip.provenance import write_provenance

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
folds = prepare_rsna_folds(
    snakemake.input.train,
    snakemake.input.manifest,
    n_folds=snakemake.params.folds,
    seed=snakemake.params.seed,
    fold_file=snakemake.params.fold_file,
)
write_table(folds, snakemake.output.folds)
write_provenance(
    snakemake.output.provenance,
    stage="annotations",
    dataset="rsna",
    data=[snakemake.input.train, snakemake.input.manifest],
    fold_file=snakemake.params.fold_file,
    folds=snakemake.params.folds,
    seed=snakemake.params.seed,
    images=len(folds),
)
