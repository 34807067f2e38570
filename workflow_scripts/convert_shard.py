import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.convert_shard(
    spec=params.spec,
    shard=int(snakemake.wildcards.shard),
    n_shards=params.n_shards,
    png_root=params.png_root,
    width=params.width,
    height=params.height,
    legacy=params.legacy,
    processes=snakemake.threads,
    manifest=snakemake.output.manifest,
)
