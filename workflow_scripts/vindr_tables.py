import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.annotations.tables import write_table
from mammoclip.logs import log_to_file
from mammoclip.pipeline import prepare_vindr_tables
from mammoclip.provenance import write_provenance

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
tables = prepare_vindr_tables(
    snakemake.input.breast,
    snakemake.input.findings,
    snakemake.input.manifest,
    n_folds=snakemake.params.folds,
    seed=snakemake.params.seed,
    legacy=snakemake.params.legacy,
    box_table=snakemake.input.get("box_table"),
)
for name, table in tables.items():
    write_table(table, snakemake.output[name])
write_provenance(
    snakemake.output.provenance,
    stage="annotations",
    dataset="vindr",
    data=[str(path) for path in snakemake.input],
    validation_folds=snakemake.params.folds,
    seed=snakemake.params.seed,
    legacy=snakemake.params.legacy,
    rows={name: len(table) for name, table in tables.items()},
    boxes=tables["boxes"].attrs["box_summary"],
)
