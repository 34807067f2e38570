import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import join_preprocess_manifests
from mammoclip.provenance import write_provenance

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
manifest = join_preprocess_manifests(
    snakemake.input.shards, max_failed_fraction=snakemake.params.max_failed_fraction
)
manifest.to_csv(snakemake.output.manifest, index=False)
spec = snakemake.params.spec
write_provenance(
    snakemake.output.provenance,
    stage="preprocess",
    dataset=spec["name"],
    source=spec["source"],
    data_root=spec["root"],
    metadata_csv=spec["metadata_csv"],
    width=snakemake.params.width,
    height=snakemake.params.height,
    legacy=snakemake.params.legacy,
    seed=snakemake.params.seed,
    images=len(manifest),
    failed=int((manifest["status"] != "ok").sum()),
)
