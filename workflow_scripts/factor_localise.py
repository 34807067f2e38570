import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, params, wc = snakemake.input, snakemake.params, snakemake.wildcards
stages.factor_localise(
    protocol=wc.protocol,
    model=wc.model,
    seed=int(wc.seed),
    settings=params.settings,
    paper_model=params.paper_model,
    checkpoint=inp.checkpoint,
    embeddings=inp.embeddings,
    mapper=inp.mapper,
    images=inp.images,
    boxes=inp.boxes,
    outputs=dict(snakemake.output.items()),
    text_backbone=params.text_backbone,
    num_workers=params.num_workers,
    threads=snakemake.threads,
)
