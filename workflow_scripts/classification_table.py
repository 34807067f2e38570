from pathlib import Path

import _bootstrap  # noqa: F401  (makes the package importable)

from mammoclip.logs import log_to_file
from mammoclip.pipeline import build_paper_tables

snakemake = snakemake  # noqa: F821  (injected by Snakemake)
log_to_file(snakemake.log[0])
out = snakemake.output
datasets = snakemake.params.plot_datasets  # {label: dataset}
labels = {path: Path(path).stem.removeprefix("efficiency_") for path in out.plots}
build_paper_tables(
    list(snakemake.input.classification),
    list(snakemake.input.zero_shot),
    paper_results=snakemake.input.paper_results,
    protocol=snakemake.wildcards.protocol,
    out_stem=str(Path(out.markdown).with_suffix("")),
    plots={(datasets[label], label): path for path, label in labels.items()},
    model_of=snakemake.params.model_of,
    paper_model=snakemake.params.paper_model,
)
