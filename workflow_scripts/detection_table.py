import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, out, params = snakemake.input, snakemake.output, snakemake.params
stages.detection_table(
    metrics=list(inp.metrics),
    detections=list(inp.detections),
    images=inp.images,
    boxes=inp.boxes,
    paper_results=inp.paper_results,
    protocol=snakemake.wildcards.protocol,
    markdown=out.markdown,
    csv=out.csv,
    froc_plots=list(out.froc_plots),
    panels=list(out.panels),
    paper_model=params.paper_model,
    iou_threshold=params.iou_threshold,
)
