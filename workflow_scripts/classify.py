import _bootstrap  # noqa: F401  (makes the package importable)
import torch

from mammoclip.downstream import run_classification
from mammoclip.logs import log_to_file

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc, inp, params = snakemake.wildcards, snakemake.input, snakemake.params
run_classification(
    dataset=wc.dataset,
    label=wc.label,
    model=wc.model,
    mode=wc.mode,
    protocol=wc.protocol,
    fraction=float(wc.frac),
    fold=int(wc.fold),
    seed=int(wc.seed),
    checkpoint=inp.checkpoint,
    tables={k: v for k, v in inp.items() if k not in ("checkpoint", "embeddings")},
    settings=params.settings,
    outputs=dict(snakemake.output.items()),
    height=params.height,
    width=params.width,
    embeddings_path=inp.get("embeddings"),
    augment=params.augment,
    precision=params.precision,
    num_workers=params.num_workers,
    n_boot=params.n_boot,
    paper_model=params.paper_model,
    text_backbone=params.text_backbone,
)
