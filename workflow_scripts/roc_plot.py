import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, params = snakemake.input, snakemake.params
stages.roc_plot(
    predictions=list(inp.predictions),
    runs=params.runs,
    scores=list(inp.scores),
    models=params.models,
    tables={k: v for k, v in inp.items() if k not in ("predictions", "scores")},
    plot=snakemake.output.plot,
    label=snakemake.wildcards.label,
    protocol=snakemake.wildcards.protocol,
)
