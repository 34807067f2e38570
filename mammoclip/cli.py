"""The ``mammoclip`` command line.

Examples:
  mammoclip version
  mammoclip bench preprocess --images 4 --scale 1.0
  mammoclip check-config config/paper.yaml
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammoclip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("version", help="print the package and code version")

    check = sub.add_parser(
        "check-config",
        help="validate config files against the schema (as the Snakefile does before any job)",
    )
    check.add_argument("configfiles", nargs="+", help="YAML config files, later ones override earlier ones")
    check.add_argument("--show", action="store_true", help="print the config with every default filled in")
    check.set_defaults(func=_check_config)

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
        choices=["uncompressed", "jpeg2000", "jpegls"],
        help="transfer syntax to test; repeat for several (default: jpeg2000 and uncompressed)",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        from mammoclip.provenance import code_version

        print(code_version())
        return 0
    if getattr(args, "syntax", "unset") is None:
        args.syntax = ["jpeg2000", "uncompressed"]
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
