import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import generate_phantom_dataset

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
generate_phantom_dataset(
    snakemake.params.dataset,
    snakemake.params.out_dir,
    size=snakemake.params.size,
    image_scale=snakemake.params.image_scale,
    seed=snakemake.params.seed,
    transfer_syntaxes=snakemake.params.transfer_syntaxes,
    test_fraction=snakemake.params.test_fraction,
)
