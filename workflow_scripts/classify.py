import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip import stages
from mammoclip.logs import log_to_file
from mammoclip.runs import RunKey

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
inp, params = snakemake.input, snakemake.params
stages.classify(
    key=RunKey.from_wildcards(snakemake.wildcards),
    settings=params.settings,
    checkpoint=inp.checkpoint,
    tables={k: v for k, v in inp.items() if k not in ("checkpoint", "embeddings")},
    embeddings=inp.get("embeddings"),
    outputs=dict(snakemake.output.items()),
    height=params.height,
    width=params.width,
    augment=params.augment,
    precision=params.precision,
    num_workers=params.num_workers,
    n_boot=params.n_boot,
    paper_model=params.paper_model,
    text_backbone=params.text_backbone,
    threads=snakemake.threads,
)
