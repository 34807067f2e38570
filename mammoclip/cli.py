"""The ``mammoclip`` command line.

Examples:
  mammoclip embed b5-model-best-epoch-7.tar results/png/vindr -o vindr-embeddings.parquet
  mammoclip score b5-model-best-epoch-7.tar scans/ --prompts "no mass" "mass" -o mass.csv
  mammoclip score model.tar results/preprocess/rsna/manifest.csv --prompts-file prompts.yaml -o scores.csv
  mammoclip version
  mammoclip bench preprocess --images 4 --scale 1.0
  mammoclip bench annotations
  mammoclip bench detect --steps 2
  mammoclip check-config config/paper.yaml
  mammoclip demo-docs --results results --out docs/demo --readme README.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _bench_preprocess(args: argparse.Namespace) -> int:
    from mammoclip.bench import benchmark_preprocessing, format_benchmark

    with tempfile.TemporaryDirectory(prefix="mammoclip-bench-") as tmp:
        work_dir = Path(args.work_dir) if args.work_dir else Path(tmp)
        table = benchmark_preprocessing(
            work_dir,
            n_images=args.images,
            scale=args.scale,
            transfer_syntaxes=tuple(args.syntax),
            width=args.width,
            height=args.height,
            seed=args.seed,
            repeats=args.repeats,
        )
    print(format_benchmark(table))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def _embed_inputs(args: argparse.Namespace):
    """``(inputs, model, tokenizer, device, raw, projected)`` for the images and checkpoint in ``args``."""
    from mammoclip.checkpoints import load_clip
    from mammoclip.inference import embed_batches, list_inputs, pick_device

    inputs = list_inputs(args.images)  # cheap checks first: no model load for an empty input
    device = pick_device(args.device)
    model, tokenizer, _ = load_clip(args.checkpoint, text_backbone=args.text_backbone)
    raw, projected = embed_batches(
        model,
        inputs,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.workers,
        legacy=args.legacy,
    )
    return inputs, model, tokenizer, device, raw, projected


def _provenance(args: argparse.Namespace, n_images: int) -> dict:
    from mammoclip.provenance import provenance

    return provenance(
        checkpoint=str(Path(args.checkpoint).resolve()),
        images=str(args.images),
        n_images=n_images,
        height=args.height,
        width=args.width,
        legacy=args.legacy,
    )


def _embed(args: argparse.Namespace) -> int:
    from mammoclip.inference import write_embeddings

    inputs, _, _, _, raw, projected = _embed_inputs(args)
    write_embeddings(args.output, inputs["image_id"], raw, projected, _provenance(args, len(inputs)))
    dims = f"{raw.shape[1]} raw, {projected.shape[1]} projected"
    print(f"wrote {len(inputs)} embeddings ({dims}) to {args.output}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from mammoclip.inference import InferenceError, read_prompts, score_embeddings

    if args.prompts_file:
        tasks = read_prompts(args.prompts_file)
    elif args.prompts and len(args.prompts) >= 2:
        tasks = {"score": {p: [p] for p in args.prompts}}
    else:
        raise InferenceError("give at least two prompts (--prompts 'no mass' 'mass') or --prompts-file")
    inputs, model, tokenizer, device, _, projected = _embed_inputs(args)
    scores = score_embeddings(model, tokenizer, inputs["image_id"], projected, tasks, device=device)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(args.output, index=False)
    print(f"wrote scores of {len(inputs)} images for {len(tasks)} task(s) to {args.output}")
    return 0


def _bench_inference(args: argparse.Namespace) -> int:
    import pandas as pd

    from mammoclip.bench import benchmark_inference, format_benchmark

    rows = [
        benchmark_inference(
            args.encoder,
            height=args.height,
            width=args.width,
            batch_size=args.batch_size,
            batches=args.batches,
            device=args.device,
            precision=precision,
            channels_last=not args.no_channels_last,
        )
        for precision in args.precision
    ]
    print(format_benchmark(pd.DataFrame(rows)))
    return 0


def _bench_detect(args: argparse.Namespace) -> int:
    from mammoclip.bench import benchmark_detection, format_benchmark

    table = benchmark_detection(
        args.encoder,
        size=args.size,
        batch_size=args.batch_size,
        steps=args.steps,
        device=args.device,
        precision=args.precision,
        modes=tuple(args.mode or ["ft"]),
        boxes_per_image=args.boxes,
        score_threshold=args.score_threshold,
        fpn_channels=args.fpn_channels,
        seed=args.seed,
    )
    print(format_benchmark(table))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def _bench_dag(args: argparse.Namespace) -> int:
    import pandas as pd

    from mammoclip.bench import benchmark_dag, format_benchmark

    root = Path(__file__).resolve().parent.parent
    snakemake = Path(sys.executable).with_name("snakemake")
    with tempfile.TemporaryDirectory(prefix="mammoclip-dag-") as tmp:
        row = benchmark_dag(
            root / "Snakefile",
            args.configfile,
            tmp,
            repeats=args.repeats,
            snakemake=str(snakemake) if snakemake.exists() else "snakemake",
        )
    print(format_benchmark(pd.DataFrame([row])))
    return 0


def _bench_annotations(args: argparse.Namespace) -> int:
    from mammoclip.bench import benchmark_annotations, format_benchmark

    with tempfile.TemporaryDirectory(prefix="mammoclip-annotations-") as tmp:
        table = benchmark_annotations(
            Path(args.work_dir) if args.work_dir else Path(tmp), repeats=args.repeats, seed=args.seed
        )
    print(format_benchmark(table))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from mammoclip.config import ConfigError, fill_defaults, load_config, load_schema, read_yaml

    try:
        config: dict = {}
        for path in args.configfiles:
            config.update(read_yaml(path))  # later files override top-level keys, as in Snakemake
        load_config(config, load_schema(), base_dir=Path.cwd())
    except ConfigError as err:
        print(f"mammoclip: {err}", file=sys.stderr)
        return 2
    if args.show:
        import yaml

        print(yaml.safe_dump(fill_defaults(config, load_schema()), sort_keys=False))
    print(f"ok: {', '.join(args.configfiles)}")
    return 0


def _demo_docs(args: argparse.Namespace) -> int:
    from mammoclip.demo_docs import DEMO_TABLE, update_readme, write_demo_docs

    for path in write_demo_docs(args.results, args.out):
        print(f"wrote {path}")
    if args.readme:
        changed = update_readme(args.readme, Path(args.out) / DEMO_TABLE[1])
        print(f"{'updated' if changed else 'unchanged'}: {args.readme}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammoclip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("version", help="print the package and code version")

    check = sub.add_parser(
        "check-config",
        help="validate config files against the schema (as the Snakefile does before any job)",
    )
    check.add_argument("configfiles", nargs="+", help="YAML config files, later ones override earlier ones")
    check.add_argument("--show", action="store_true", help="print the config with every default filled in")
    check.set_defaults(func=_check_config)

    demo = sub.add_parser(
        "demo-docs",
        help="copy a demo run's figures and table into the docs (what the README shows)",
        description="Copies the clean protocol's Mass data-efficiency and ROC figures\n"
        "(results/tables/clean/efficiency_Mass.png, roc_Mass.png) and classification table\n"
        "(classification.md -> classification_clean.md) into --out and, with --readme, puts the table\n"
        "into the README between its <!-- demo-table:start --> and <!-- demo-table:end --> lines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (after the demo):\n"
        "  mammoclip demo-docs --results results --out docs/demo --readme README.md",
    )
    demo.add_argument("--results", default="results", help="the demo's results folder (default results)")
    demo.add_argument("--out", default="docs/demo", help="folder to write into (default docs/demo)")
    demo.add_argument("--readme", help="also update this README's demo table (e.g. README.md)")
    demo.set_defaults(func=_demo_docs)

    def inference_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "checkpoint", help="a released Mammo-CLIP .tar or a checkpoint written by this pipeline"
        )
        p.add_argument(
            "images",
            help="a folder of PNG/DICOM files, a CSV (image_id + path/png_path; a preprocessing manifest "
            "works), or one image",
        )
        p.add_argument("-o", "--output", required=True, help="output file")
        p.add_argument("--height", type=int, default=1520, help="model input height (default 1520)")
        p.add_argument("--width", type=int, default=912, help="model input width (default 912)")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
        p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
        p.add_argument(
            "--text-backbone",
            help="folder or Hugging Face cache name of the text model (tokenizer) for released checkpoints "
            "(default emilyalsentzer/Bio_ClinicalBERT, read offline); our checkpoints carry their own",
        )
        p.add_argument("--legacy", action="store_true", help="DICOM inputs: upstream's preprocessing quirks")

    embed = sub.add_parser(
        "embed",
        help="per-image raw (encoder) and projected (512-d) embeddings",
        description="Writes image_id, raw encoder features and normalised projected embeddings to "
        "Parquet (.parquet) or NumPy (.npz), with provenance metadata.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mammoclip embed b5-model-best-epoch-7.tar results/png/vindr -o vindr.parquet",
    )
    inference_arguments(embed)
    embed.set_defaults(func=_embed)

    score = sub.add_parser(
        "score",
        help="per-image class probabilities for prompt pairs or prompt sets",
        description="Class probabilities softmax(exp(logit_scale) * cosine(image, class)); a class with "
        "several prompts uses the normalised mean of their embeddings. Output CSV: image_id, task, class, "
        "probability, predicted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mammoclip score model.tar scans/ --prompts 'no mass' 'mass' -o mass.csv\n"
        "  mammoclip score model.tar scans/ --prompts-file prompts.yaml -o scores.csv\n"
        "prompts.yaml: {mass: {absent: [no mass], present: [mass, a mass is seen]}, ...}",
    )
    inference_arguments(score)
    group = score.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompts", nargs="+", help="one prompt per class, e.g. 'no mass' 'mass'")
    group.add_argument("--prompts-file", help="YAML/JSON: {task: {class: [prompts]}} or {class: [prompts]}")
    score.set_defaults(func=_score)

    bench = sub.add_parser("bench", help="benchmarks (not part of the test suite)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    pre = bench_sub.add_parser(
        "preprocess",
        help="images/s per core of DICOM->PNG conversion: decode only, ours, upstream's code path",
        description=(
            "Writes phantom DICOMs at the real VinDr size (scale 1.0) and times, on one thread: (a) decoding "
            "only, (b) this pipeline's conversion (default and legacy), (c) a straightforward "
            "re-implementation of upstream's per-image code path."
        ),
    )
    pre.add_argument("--images", type=int, default=4, help="images per transfer syntax (default 4)")
    pre.add_argument(
        "--scale", type=float, default=1.0, help="size relative to VinDr's 3518x2800 (default 1.0)"
    )
    pre.add_argument(
        "--syntax",
        action="append",
        choices=["uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"],
        help="transfer syntax to test (one table row each); repeat for several (default: jpeg2000, "
        "jpeg_lossless and uncompressed)",
    )
    pre.add_argument("--width", type=int, default=912)
    pre.add_argument("--height", type=int, default=1520)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--repeats", type=int, default=2, help="timings per image and method; the median counts")
    pre.add_argument(
        "--work-dir", help="keep the generated DICOMs and PNGs here (default: a temporary folder)"
    )
    pre.add_argument("--csv", help="also write the table to this CSV")
    pre.set_defaults(func=_bench_preprocess)
    dag = bench_sub.add_parser(
        "dag",
        help="seconds for `snakemake -n` (DAG construction) of a config, and its job count",
        description="Replaces the config's dataset roots by folders whose metadata CSVs have the real "
        "datasets' row counts, then times `snakemake -n` (no job runs). Example: "
        "mammoclip bench dag config/paper.yaml",
    )
    dag.add_argument("configfile", nargs="?", default="config/paper.yaml", help="default: config/paper.yaml")
    dag.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (default 3)")
    dag.set_defaults(func=_bench_dag)
    ann = bench_sub.add_parser(
        "annotations",
        help="seconds per step of the annotation stage on real-scale VinDr and RSNA metadata",
        description="Writes the real-scale rehearsal files (VinDr's 20 000 + 20 486 annotation rows, RSNA's "
        "54 706-row train.csv, their preprocessing manifests; no images) and times reading + validating, "
        "box mapping and the tables for VinDr, and the folds for RSNA. Example: mammoclip bench annotations",
    )
    ann.add_argument("--repeats", type=int, default=3, help="timings per step; the median counts (default 3)")
    ann.add_argument("--seed", type=int, default=0, help="seed of the generated files (default 0)")
    ann.add_argument("--work-dir", help="keep the generated files here (default: a temporary folder)")
    ann.add_argument("--csv", help="also write the table to this CSV")
    ann.set_defaults(func=_bench_annotations)
    inf = bench_sub.add_parser(
        "inference",
        help="image-encoder throughput (images/s) and peak memory",
        description="Times the image encoder's forward pass with torch.inference_mode, channels-last and "
        "(GPU) autocast, on random input of the given size.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mammoclip bench inference --encoder efficientnet_b0 --height 256 --width 160\n"
        "  mammoclip bench inference --encoder tf_efficientnet_b5_ns-detect --batch-size 1 --batches 2\n"
        "  mammoclip bench inference --encoder tf_efficientnet_b5_ns-detect --device cuda "
        "--precision fp32 --precision bf16 --precision fp16",
    )
    inf.add_argument(
        "--encoder", default="tf_efficientnet_b5_ns-detect", help="legacy name or any timm model"
    )
    inf.add_argument("--height", type=int, default=1520)
    inf.add_argument("--width", type=int, default=912)
    inf.add_argument("--batch-size", type=int, default=8)
    inf.add_argument("--batches", type=int, default=3, help="timed batches after one warm-up batch")
    inf.add_argument("--device", default="auto")
    inf.add_argument(
        "--precision",
        action="append",
        choices=["fp32", "bf16", "fp16"],
        help="repeat for several (default fp32)",
    )
    inf.add_argument("--no-channels-last", action="store_true")
    inf.set_defaults(func=_bench_inference)
    det = bench_sub.add_parser(
        "detect",
        help="RetinaNet detector: training and inference images/s and peak memory",
        description="Builds the detection stage's RetinaNet (schema defaults of detect.labels) on a randomly "
        "initialised encoder and times, on random images of --size x --size, inference (eval mode, "
        "torch.inference_mode, decoding and NMS) and training steps (random boxes, focal + box loss, "
        "backward, gradient clipping, Adam), each over --steps batches after one warm-up batch. Peak "
        "memory: torch.cuda.max_memory_allocated on a GPU, the process's peak resident size on the CPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mammoclip bench detect --steps 2\n"
        "  mammoclip bench detect --mode ft --mode freeze --batch-size 2 --steps 3\n"
        "  mammoclip bench detect --device cuda --batch-size 8 --steps 20 --precision bf16",
    )
    det.add_argument(
        "--encoder", default="tf_efficientnet_b5_ns-detect", help="legacy name or any timm model (B5)"
    )
    det.add_argument("--size", type=int, default=512, help="input height = width in pixels (default 512)")
    det.add_argument("--batch-size", type=int, default=2, help="images per batch (default 2)")
    det.add_argument("--steps", type=int, default=3, help="timed batches after one warm-up (default 3)")
    det.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, auto")
    det.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    det.add_argument(
        "--mode",
        action="append",
        choices=["ft", "freeze"],
        help="ft = finetune, freeze = frozen encoder; repeat for both (default ft)",
    )
    det.add_argument("--boxes", type=int, default=2, help="random training boxes per image (default 2)")
    det.add_argument(
        "--score-threshold",
        type=float,
        default=0.0,
        help="inference score threshold (default 0: every candidate goes through NMS, the worst case)",
    )
    det.add_argument(
        "--fpn-channels", type=int, default=None, help="pyramid and head width (default: the schema's, 256)"
    )
    det.add_argument("--seed", type=int, default=0)
    det.add_argument("--csv", help="also write the table to this CSV")
    det.set_defaults(func=_bench_detect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except Exception as err:
        if args.debug or not _is_user_error(err):
            raise
        print(f"mammoclip: error: {err}", file=sys.stderr)
        return 2


def _is_user_error(err: Exception) -> bool:
    """Errors about the user's input (bad file, checkpoint, value): one line, no traceback."""
    from mammoclip.checkpoints import CheckpointError
    from mammoclip.config import ConfigError
    from mammoclip.demo_docs import DemoDocsError
    from mammoclip.inference import InferenceError

    return isinstance(err, InferenceError | CheckpointError | ConfigError | DemoDocsError | FileNotFoundError)


def _run(args: argparse.Namespace) -> int:
    if args.command == "version":
        from mammoclip.provenance import code_version

        print(code_version())
        return 0
    if getattr(args, "syntax", "unset") is None:
        from mammoclip.bench import DEFAULT_SYNTAXES

        args.syntax = list(DEFAULT_SYNTAXES)
    if getattr(args, "precision", "unset") is None:
        args.precision = ["fp32"]
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
