import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
out, params = snakemake.output, snakemake.params
stages.classification_table(
    classification=list(snakemake.input.classification),
    zero_shot=list(snakemake.input.zero_shot),
    paper_results=snakemake.input.paper_results,
    markdown=out.markdown,
    csv=out.csv,
    plots=list(out.plots),
    protocol=snakemake.wildcards.protocol,
    plot_datasets=params.plot_datasets,
    model_of=params.model_of,
    paper_model=params.paper_model,
)
