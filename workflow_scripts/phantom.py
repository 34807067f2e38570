import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
params = snakemake.params
stages.phantom(
    dataset=params.dataset,
    out_dir=params.out_dir,
    size=params.size,
    image_scale=params.image_scale,
    seed=params.seed,
    transfer_syntaxes=params.transfer_syntaxes,
    options=params.options,
)
