import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.join_manifest(
    shards=list(snakemake.input.shards),
    manifest=snakemake.output.manifest,
    provenance=snakemake.output.provenance,
    spec=params.spec,
    max_failed_fraction=params.max_failed_fraction,
    seed=params.seed,
    width=params.width,
    height=params.height,
    legacy=params.legacy,
)
