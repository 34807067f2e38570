import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file
from mammoclip.runs import RunKey

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, params = snakemake.input, snakemake.params
stages.detect(
    key=RunKey.from_wildcards(snakemake.wildcards),
    settings=params.settings,
    checkpoint=inp.checkpoint,
    images=inp.images,
    boxes=inp.boxes,
    outputs=dict(snakemake.output.items()),
    n_boot=params.n_boot,
    iou_threshold=params.iou_threshold,
    paper_model=params.paper_model,
    num_workers=params.num_workers,
    precision=params.precision,
    text_backbone=params.text_backbone,
    threads=snakemake.threads,
)
