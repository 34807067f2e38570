import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import evaluate_zero_shot

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
tables = {k: v for k, v in snakemake.input.items() if k != "scores"}
results = evaluate_zero_shot(
    snakemake.wildcards.dataset,
    snakemake.input.scores,
    tables,
    checkpoint=snakemake.params.checkpoint,
    seed=snakemake.params.seed,
)
results.to_csv(snakemake.output.results, index=False)
