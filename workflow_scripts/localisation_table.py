import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, out, params = snakemake.input, snakemake.output, snakemake.params
stages.localisation_table(
    metrics=list(inp.metrics),
    per_image=list(inp.per_image),
    heatmaps=list(inp.heatmaps),
    images=inp.images,
    boxes=inp.boxes,
    paper_results=inp.paper_results,
    protocol=snakemake.wildcards.protocol,
    markdown=out.markdown,
    csv=out.csv,
    overlays=list(out.overlays),
    percentile=params.percentile,
    n_overlays=params.n_overlays,
)
