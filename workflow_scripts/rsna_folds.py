import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.rsna_folds(
    train=snakemake.input.train,
    manifest=snakemake.input.manifest,
    train_folds=snakemake.output.folds,
    provenance=snakemake.output.provenance,
    folds=params.folds,
    fold_file=params.fold_file,
    seed=params.seed,
)
