"""Pretraining entry point: from the stage's tables to the best checkpoint, on one process or under torchrun.

``launch_pretraining(params, gpus=...)`` runs in this process for 0 or 1 GPU and starts
``torchrun --standalone --nproc_per_node=N -m mammoclip.train.run PARAMS.json`` for N > 1 (one process per
GPU). ``params`` is plain data (written to ``out_dir/params.json``), so every rank rebuilds the same run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mammoclip.io import atomic_copy

log = logging.getLogger(__name__)


def _png_paths(manifests: list[str]) -> dict[str, str]:
    from mammoclip.annotations.reports import png_paths_from_manifest
    from mammoclip.preprocess import read_manifest

    paths: dict[str, str] = {}
    for manifest in manifests:
        paths.update(png_paths_from_manifest(read_manifest(manifest), log))
    return paths


def build_text_model(
    report_table: str | os.PathLike, out_dir: str | os.PathLike, *, settings: Mapping, seed: int
):
    """The demo's tiny BERT: a WordPiece vocabulary trained on the report corpus, our VinDr prompts and
    the scoring prompts, so that every word the model will read is in its vocabulary."""
    from mammoclip.annotations.reports import read_pretraining_table
    from mammoclip.data.clip_data import load_prompts
    from mammoclip.inference import normalise_prompt
    from mammoclip.models.text_encoders import build_tiny_bert

    table = read_pretraining_table(report_table)
    corpus = [t for column in ("text", "text_augment") for row in table[column] for t in row]
    for finding in load_prompts().values():
        corpus += [s for sentences in finding.values() for s in sentences]
    corpus += [normalise_prompt(p) for p in settings.get("extra_prompts", [])]
    return build_tiny_bert(
        corpus,
        out_dir,
        vocab_size=settings["vocab_size"],
        hidden_size=settings["hidden_size"],
        layers=settings["layers"],
        heads=settings["heads"],
        intermediate=4 * settings["hidden_size"],
        seed=seed,
    )


def run_pretraining(params: Mapping[str, Any]) -> Path:
    """Build data, model and trainer from ``params`` and train; returns the best checkpoint path."""
    import torch

    from mammoclip.data.clip_data import build_pretraining_datasets, make_collate
    from mammoclip.models.clip import build_clip
    from mammoclip.train.pretrain import TrainConfig, seed_everything, train_clip

    seed_everything(params["seed"])
    torch.set_num_threads(max(int(params.get("threads", 1)), 1))
    png_paths = _png_paths(params["manifests"])
    train, val = build_pretraining_datasets(
        report_table=params.get("report_table"),
        vindr_table=params.get("vindr_table"),
        png_paths=png_paths,
        height=params["height"],
        width=params["width"],
        val_fold=params["val_fold"],
        seed=params["seed"],
        legacy_augment=params["legacy"],
        normal_states_absences=not params["legacy"],
    )
    log.info("pretraining on %d breasts, validating on %d", len(train), len(val))
    model, tokenizer = build_clip(
        image_encoder=params["image_encoder"],
        text_backbone=params["text_model"],
        projection=params["projection"],
        projection_dim=params["projection_dim"],
        pooling=params["pooling"],
    )
    config = TrainConfig.from_dict({**params["train"], "seed": params["seed"]})
    return train_clip(
        model,
        tokenizer,
        train,
        val,
        make_collate(tokenizer, max_length=params["text_max_length"]),
        out_dir=params["out_dir"],
        config=config,
        metadata={"params": dict(params)},
    )


def launch_pretraining(
    params: Mapping[str, Any], *, gpus: int, checkpoint: str | os.PathLike, metrics: str | os.PathLike
) -> Path:
    """Run :func:`run_pretraining` here (0-1 GPU) or under torchrun with one process per GPU, then copy the
    best checkpoint and the metrics out of the run folder (which keeps the state a rerun resumes from)."""
    out_dir = Path(params["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    params_file = out_dir / "params.json"
    params_file.write_text(json.dumps(dict(params), indent=2, sort_keys=True) + "\n")
    best = run_pretraining(params) if gpus <= 1 else _run_torchrun(params_file, gpus)
    shutil.copyfile(out_dir / "metrics.csv", metrics)
    return atomic_copy(best, checkpoint)


def _run_torchrun(params_file: Path, gpus: int) -> Path:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "mammoclip.train.run",
        str(params_file),
    ]
    log.info("launching %s", " ".join(command))
    subprocess.run(command, check=True)
    return params_file.parent / "model-best.tar"


def main(argv: list[str] | None = None) -> int:
    """``python -m mammoclip.train.run PARAMS.json`` (what torchrun starts on every rank)."""
    from mammoclip.train.distributed import cleanup

    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = json.loads(Path(args[0]).read_text())
    try:
        run_pretraining(params)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
