import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, out, params = snakemake.input, snakemake.output, snakemake.params
stages.vindr_tables(
    breast=inp.breast,
    findings=inp.findings,
    manifest=inp.manifest,
    box_table=inp.get("box_table"),
    rows=out.rows,
    images=out.images,
    boxes=out.boxes,
    image_labels=out.image_labels,
    provenance=out.provenance,
    folds=params.folds,
    seed=params.seed,
    legacy=params.legacy,
)
