import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.datasets import DatasetSpec
from mammoclip.logs import log_to_file
from mammoclip.pipeline import preprocess_shard

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
manifest = preprocess_shard(
    DatasetSpec.from_params(snakemake.params.spec),
    shard=int(snakemake.wildcards.shard),
    n_shards=snakemake.params.n_shards,
    png_root=snakemake.params.png_root,
    width=snakemake.params.width,
    height=snakemake.params.height,
    legacy=snakemake.params.legacy,
    processes=snakemake.threads,
)
manifest.to_csv(snakemake.output.manifest, index=False)
