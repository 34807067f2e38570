"""Benchmark of the DICOM -> PNG stage against plain decoding and the upstream reference.

:func:`benchmark_preprocessing` writes VinDr-like phantom DICOMs (:mod:`mammoclip.phantoms`, at the real
VinDr image sizes for ``scale=1.0``) in each requested transfer syntax (by default
:data:`DEFAULT_SYNTAXES`: RSNA's two, JPEG 2000 lossless and JPEG Lossless SV1, and uncompressed; one
table row per syntax and method) and measures, on one thread (OpenCV's pool set to 1 thread):

* ``decode``: dicomsdl ``open`` + ``pixelData(storedvalue=True)``, the floor for any converter;
* ``ours (default)`` / ``ours (legacy)``: :func:`mammoclip.preprocess.convert_dicom_to_png` end to end
  (header checks, decode, conversion, PNG write);
* ``upstream reference``: :func:`mammoclip.upstream_reference.convert_like_upstream` + ``cv2.imwrite``.

:func:`benchmark_processes` times :func:`mammoclip.preprocess.convert_images` with 1 and with more worker
processes. :func:`benchmark_detection` times the detection stage's RetinaNet (docs/upstream.md#detection):
training and inference images/s and peak memory, on the CPU or a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import cv2
import dicomsdl
import numpy as np
import pandas as pd

from mammoclip.phantoms import generate_vindr
from mammoclip.preprocess import convert_dicom_to_png, convert_images
from mammoclip.upstream_reference import convert_like_upstream

__all__ = [
    "DEFAULT_SYNTAXES",
    "benchmark_detection",
    "benchmark_preprocessing",
    "benchmark_processes",
    "format_benchmark",
    "write_benchmark_dicoms",
]

METHODS = ("decode", "ours (default)", "ours (legacy)", "upstream reference")
#: transfer syntaxes (:data:`mammoclip.phantoms.dicom_writer.TRANSFER_SYNTAXES` names) timed by default
DEFAULT_SYNTAXES = ("jpeg2000", "jpeg_lossless", "uncompressed")


def write_benchmark_dicoms(
    work_dir: str | os.PathLike,
    *,
    n_images: int,
    scale: float = 1.0,
    transfer_syntaxes: Sequence[str] = DEFAULT_SYNTAXES,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write ``n_images`` VinDr-like phantom DICOMs per transfer syntax; returns their paths by syntax.

    ``scale=1.0`` gives the real VinDr sizes (e.g. 3518 x 2800) with the phantoms' mix of bit depths and
    photometric interpretations.
    """
    paths: dict[str, list[Path]] = {}
    for ts in transfer_syntaxes:
        out_dir = Path(work_dir) / "dicom" / ts
        truth = generate_vindr(
            out_dir,
            n_studies=math.ceil(n_images / 4),
            image_scale=scale,
            seed=seed,
            transfer_syntaxes=(ts,),
        )
        paths[ts] = [out_dir / p for p in truth["dicom_path"].iloc[:n_images]]
    return paths


def _time_methods(
    methods: dict[str, Callable[[Path, Path], object]], sources: list[Path], out_dir: Path, repeats: int
) -> dict[str, float]:
    """Median seconds per image of each method; methods are interleaved image by image so that drifting
    machine load affects them alike."""
    out_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for k, fn in enumerate(methods.values()):
        fn(sources[0], out_dir / f"warmup{k}.png")
    for _ in range(repeats):
        for i, src in enumerate(sources):
            for k, (name, fn) in enumerate(methods.items()):
                start = time.perf_counter()
                fn(src, out_dir / f"{k}_{i}.png")
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _method(name: str, width: int, height: int) -> Callable[[Path, Path], object]:
    if name == "decode":
        return lambda src, dst: dicomsdl.open(str(src)).pixelData(storedvalue=True)
    if name in ("ours (default)", "ours (legacy)"):
        legacy = name == "ours (legacy)"

        def ours(src: Path, dst: Path) -> object:
            row = convert_dicom_to_png(src, dst, width=width, height=height, legacy=legacy)
            if row["status"] != "ok":
                raise RuntimeError(f"benchmark image failed: {row['reason']}")
            return row

        return ours
    return lambda src, dst: cv2.imwrite(str(dst), convert_like_upstream(src, width, height))


def benchmark_preprocessing(
    work_dir: str | os.PathLike,
    *,
    n_images: int = 4,
    scale: float = 1.0,
    transfer_syntaxes: Sequence[str] = DEFAULT_SYNTAXES,
    width: int = 912,
    height: int = 1520,
    seed: int = 0,
    repeats: int = 1,
) -> pd.DataFrame:
    """Images/second on one thread for decode only, our conversion (default, legacy) and the reference.

    Each method runs ``repeats`` times on each of the ``n_images`` files (interleaved); the median time
    is reported. Columns: ``syntax, method, images_per_s, seconds_per_image``, ``ratio_to_decode`` (time /
    decode time), ``overhead_vs_decode`` (extra time / decode time) and ``speedup_vs_reference``
    (reference time / time).
    """
    work_dir = Path(work_dir)
    paths = write_benchmark_dicoms(
        work_dir, n_images=n_images, scale=scale, transfer_syntaxes=transfer_syntaxes, seed=seed
    )
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        rows = []
        for ts, sources in paths.items():
            methods = {name: _method(name, width, height) for name in METHODS}
            seconds = _time_methods(methods, sources, work_dir / "png" / ts, repeats)
            rows += [{"syntax": ts, "method": name, "seconds_per_image": seconds[name]} for name in METHODS]
    finally:
        cv2.setNumThreads(threads)
    table = pd.DataFrame(rows)
    table["images_per_s"] = 1.0 / table["seconds_per_image"]
    per_method = table.set_index(["method", "syntax"])["seconds_per_image"]
    decode = table["syntax"].map(per_method["decode"])
    reference = table["syntax"].map(per_method["upstream reference"])
    table["ratio_to_decode"] = table["seconds_per_image"] / decode
    table["overhead_vs_decode"] = (table["seconds_per_image"] - decode) / decode
    table["speedup_vs_reference"] = reference / table["seconds_per_image"]
    return table[
        [
            "syntax",
            "method",
            "images_per_s",
            "seconds_per_image",
            "ratio_to_decode",
            "overhead_vs_decode",
            "speedup_vs_reference",
        ]
    ]


def benchmark_processes(
    work_dir: str | os.PathLike,
    *,
    n_images: int = 8,
    scale: float = 1.0,
    transfer_syntaxes: Sequence[str] = DEFAULT_SYNTAXES,
    processes: Sequence[int] = (1, 2),
    seed: int = 0,
) -> pd.DataFrame:
    """Wall time of :func:`convert_images` (default mode) over ``n_images`` per number of worker processes."""
    work_dir = Path(work_dir)
    paths = write_benchmark_dicoms(
        work_dir, n_images=n_images, scale=scale, transfer_syntaxes=transfer_syntaxes, seed=seed
    )
    rows = []
    for ts, sources in paths.items():
        for n in processes:
            images = pd.DataFrame(
                {
                    "image_id": [f"{ts}{i}" for i in range(len(sources))],
                    "patient_id": "p",
                    "source_path": [str(s) for s in sources],
                    "png_path": [
                        str(work_dir / "shard" / ts / f"p{n}" / f"{i}.png") for i in range(len(sources))
                    ],
                }
            )
            convert_images(images.iloc[:1], processes=1, progress=False)  # warm-up
            start = time.perf_counter()
            manifest = convert_images(images, processes=n, progress=False)
            seconds = time.perf_counter() - start
            if (manifest["status"] != "ok").any():
                raise RuntimeError("benchmark images failed")
            rows.append(
                {"syntax": ts, "processes": n, "seconds": seconds, "images_per_s": len(sources) / seconds}
            )
    table = pd.DataFrame(rows)
    fewest = table["processes"] == min(processes)
    base = table["syntax"].map(table[fewest].set_index("syntax")["images_per_s"])
    table["speedup"] = table["images_per_s"] / base
    return table


def format_benchmark(df: pd.DataFrame) -> str:
    """A plain-text table of :func:`benchmark_preprocessing` (or :func:`benchmark_processes`) results."""
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}")


if __name__ == "__main__":  # pragma: no cover - manual run: python -m mammoclip.bench WORK_DIR [scale]
    import sys

    work = sys.argv[1] if len(sys.argv) > 1 else "bench_preprocess"
    factor = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    print(format_benchmark(benchmark_preprocessing(work, scale=factor, repeats=2)))
    print()
    print(format_benchmark(benchmark_processes(work, scale=factor)))


def benchmark_inference(
    encoder: str,
    *,
    height: int,
    width: int,
    batch_size: int = 8,
    batches: int = 3,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = True,
) -> dict[str, object]:
    """Images/second and peak memory of an image encoder's forward pass under ``torch.inference_mode``.

    ``precision``: ``fp32``, or ``bf16``/``fp16`` autocast (GPU). One warm-up batch is not timed. Peak
    memory is the process's peak resident size on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.
    """
    import resource

    import torch

    from mammoclip.inference import pick_device
    from mammoclip.models.image_encoders import build_image_encoder
    from mammoclip.train.precision import autocast as precision_autocast

    dev = pick_device(device)
    model = build_image_encoder(encoder, pretrained=False).to(dev).eval()
    x = torch.randn(batch_size, 3, height, width, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = precision_autocast(dev, precision, cpu=True)  # CPU autocast too: it is what we time

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), autocast:
        model(x)  # warm-up (allocations, cuDNN autotuning)
        sync()
        start = time.perf_counter()
        for _ in range(batches):
            out = model(x)
        sync()
        seconds = time.perf_counter() - start
    if dev.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "encoder": encoder,
        "device": str(dev),
        "precision": precision,
        "input": f"{batch_size}x3x{height}x{width}",
        "images_per_s": batches * batch_size / seconds,
        "seconds_per_batch": seconds / batches,
        "peak_memory_mib": peak_mib,
        "out_dim": int(out.shape[-1]),
        "threads": torch.get_num_threads(),
    }


_PROC_STATUS = Path("/proc/self/status")


def _reset_peak_memory(dev) -> bool:
    """Start a new peak-memory window: CUDA's peak statistics; on Linux the process's resident-size high
    watermark (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``, after glibc's ``malloc_trim``
    returned freed memory). False where it cannot be reset."""
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    gc.collect()
    # hand memory freed by earlier rows back to the system, so that it does not count here
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_memory_mib(dev, *, reset: bool) -> float:
    """Peak memory since :func:`_reset_peak_memory`: ``torch.cuda.max_memory_allocated`` on a GPU; on the
    CPU the process's peak resident size (``VmHWM`` after a reset, else ``ru_maxrss``: the highest of the
    process so far)."""
    import resource

    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    if reset:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_targets(batch_size: int, size: int, boxes_per_image: int, generator, device) -> list[dict]:
    """``boxes_per_image`` random boxes (sides 1/16 to 1/4 of the image) per image, label 0."""
    import torch

    targets = []
    for _ in range(batch_size):
        sides = (torch.rand(boxes_per_image, 2, generator=generator) * 3 + 1) * size / 16
        corner = torch.rand(boxes_per_image, 2, generator=generator) * (size - sides)
        boxes = torch.cat([corner, corner + sides], dim=1)
        labels = torch.zeros(boxes_per_image, dtype=torch.int64)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return targets


def _time_detector(model, images, targets, *, dev, precision: str, steps: int, defaults: dict) -> dict:
    """``{phase: (seconds for steps batches, peak memory MiB)}`` for ``inference`` then ``train``."""
    import torch

    from mammoclip.train.precision import autocast as precision_autocast

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=defaults["lr"], weight_decay=defaults["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and precision == "fp16")
    autocast = precision_autocast(dev, precision, cpu=True)  # CPU autocast too: it is what we time

    def infer() -> None:
        with torch.inference_mode(), autocast:
            model(images)

    def train() -> None:
        with autocast:
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if defaults["max_grad_norm"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, defaults["max_grad_norm"])
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    out = {}
    for phase, step in (("inference", infer), ("train", train)):
        model.train(phase == "train")
        reset = _reset_peak_memory(dev)
        step()  # warm-up: allocations, cuDNN autotuning
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out[phase] = (time.perf_counter() - start, _peak_memory_mib(dev, reset=reset))
    return out


def benchmark_detection(
    encoder: str = "tf_efficientnet_b5_ns-detect",
    *,
    size: int = 512,
    batch_size: int = 2,
    steps: int = 3,
    device: str = "auto",
    precision: str = "fp32",
    modes: Sequence[str] = ("ft",),
    boxes_per_image: int = 2,
    score_threshold: float = 0.0,
    fpn_channels: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Inference and training images/s and peak memory of the RetinaNet detector on ``encoder``.

    The detector is :func:`mammoclip.models.detector.build_retinanet` on a randomly initialised encoder
    (``pretrained=False``) with the detector defaults of the schema (``detect.labels.Mass``: anchors, focal
    loss, Adam learning rate and weight decay, gradient clipping, detections per image) at ``size`` x
    ``size`` (upstream: 512). Per mode (``ft``, or ``freeze``: frozen encoder in eval mode) one
    ``inference`` row (``model.eval()`` + ``torch.inference_mode``: backbone, heads, decoding, NMS) and
    one ``train`` row (forward with ``boxes_per_image`` random boxes per image, focal + box loss, backward,
    clipping, Adam step), each timed over ``steps`` batches of random images after one untimed warm-up
    batch. ``score_threshold`` 0 sends every candidate (1000 per level) through NMS, post-processing's worst
    case: a random head scores about 0.01, below any run's threshold. ``precision``: ``fp32``, or
    ``bf16``/``fp16`` autocast (also timed on the CPU; fp16 training with a gradient scaler on a GPU).
    ``fpn_channels``: pyramid and head width (None: the schema's default).
    Peak memory per row (warm-up included): ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the
    process's peak resident size (model, inputs and the Python process included), per row on Linux
    (``VmHWM``, reset through ``/proc/self/clear_refs``), elsewhere ``ru_maxrss``, the process's peak so far
    (inference is timed before training, so a train row is still training's peak).
    Columns: ``encoder, device, precision, mode, phase, input, images_per_s, seconds_per_batch,
    peak_memory_mib, parameters_m, trainable_m, threads``.
    """
    import torch

    from mammoclip.inference import pick_device
    from mammoclip.models.detector import build_retinanet
    from mammoclip.models.image_encoders import build_image_encoder
    from mammoclip.train.settings import schema_defaults

    if steps < 1 or batch_size < 1 or boxes_per_image < 1:
        raise ValueError("steps, batch_size and boxes_per_image must be at least 1")
    bad = sorted(set(modes) - {"ft", "freeze"})
    if bad or not modes:
        raise ValueError(f"modes must be ft and/or freeze, got {list(modes)}")
    dev = pick_device(device)
    defaults = schema_defaults("detect", "labels", "Mass")
    settings = SimpleNamespace(
        **{
            **defaults,
            "input_height": size,
            "input_width": size,
            "score_threshold": score_threshold,
            **({} if fpn_channels is None else {"fpn_channels": int(fpn_channels)}),
        }
    )
    generator = torch.Generator().manual_seed(seed)

    rows = []
    for mode in modes:
        torch.manual_seed(seed)
        model = build_retinanet(
            build_image_encoder(encoder, pretrained=False),
            settings=settings,
            freeze=mode == "freeze",
        ).to(dev)
        images = list(torch.randn(batch_size, 3, size, size, generator=generator).to(dev))
        targets = _random_targets(batch_size, size, boxes_per_image, generator, dev)
        timings = _time_detector(
            model, images, targets, dev=dev, precision=precision, steps=steps, defaults=defaults
        )
        for phase, (seconds, peak_mib) in timings.items():
            rows.append(
                {
                    "encoder": encoder,
                    "device": str(dev),
                    "precision": precision,
                    "mode": mode,
                    "phase": phase,
                    "input": f"{batch_size}x3x{size}x{size}",
                    "images_per_s": steps * batch_size / seconds,
                    "seconds_per_batch": seconds / steps,
                    "peak_memory_mib": peak_mib,
                    "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
                    "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                    "threads": torch.get_num_threads(),
                }
            )
        del model, images, targets
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# DAG construction


#: rows of the real metadata files (docs/upstream.md#vindr-annotations, #rsna), as
#: :mod:`mammoclip.phantoms.realscale` writes them; the in-house count is a guess
PAPER_METADATA_ROWS = {"vindr": 20_000, "vindr_findings": 20_486, "rsna": 54_706, "inhouse": 50_000}


def write_paper_like_roots(root: str | Path, *, manifest_dir: str | Path | None = None) -> dict[str, str]:
    """Dataset roots holding the real datasets' metadata files, without images (a dry run reads only the
    metadata); returns ``{dataset: root}`` for every registered dataset.

    VinDr's two annotation CSVs and RSNA's ``train.csv`` are the real-scale rehearsal of
    :func:`mammoclip.phantoms.realscale.write_rehearsal` (real row counts, columns and quirks); any other
    dataset's metadata file (in-house: ``reports.csv``) is a one-column file of :data:`PAPER_METADATA_ROWS`
    rows. With ``manifest_dir`` the VinDr and RSNA preprocessing manifests are written there as well
    (``{manifest_dir}/{dataset}/manifest.csv``).
    """
    from mammoclip import registry
    from mammoclip.phantoms.realscale import write_rehearsal

    root = Path(root)
    files = write_rehearsal(root, manifest_dir=manifest_dir)
    roots = {}
    for name in registry.list_datasets():
        if name in files:
            roots[name] = str(files[name])
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        ids = "".join(f"{i}\n" for i in range(PAPER_METADATA_ROWS[name]))
        (folder / registry.get_dataset(name).metadata_files[0]).write_text("image_id\n" + ids)
        roots[name] = str(folder)
    return roots


def benchmark_dag(
    snakefile: str | Path,
    configfile: str | Path,
    workdir: str | Path,
    *,
    repeats: int = 3,
    snakemake: str = "snakemake",
) -> dict:
    """Median wall time of ``snakemake -n`` (DAG construction, no jobs run) for a config, and its job count.

    The config's dataset roots are replaced by :func:`write_paper_like_roots` folders in ``workdir``.
    """
    import re
    import statistics
    import subprocess

    import yaml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(Path(configfile).read_text())
    for dataset, folder in write_paper_like_roots(workdir / "data").items():
        if dataset in config.get("datasets", {}):
            config["datasets"][dataset]["root"] = folder
    bench_config = workdir / "config.yaml"
    bench_config.write_text(yaml.safe_dump(config))
    cmd = [
        snakemake,
        "-n",
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--configfile",
        str(bench_config),
        "--cores",
        "16",
        "--quiet",
        "rules",
    ]
    times, jobs = [], None
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        match = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, flags=re.MULTILINE)
        jobs = int(match.group(1)) if match else None
    return {
        "config": str(configfile),
        "jobs": jobs,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


# --------------------------------------------------------------------------------------------------
# Annotation stage at real scale


def benchmark_annotations(
    work_dir: str | os.PathLike,
    *,
    repeats: int = 3,
    seed: int = 0,
    vindr_folds: int = 5,
    rsna_folds: int = 4,
    fold_seed: int = 42,
) -> pd.DataFrame:
    """Seconds per step of the annotation stage on the real-scale rehearsal files (median of ``repeats``).

    Writes :func:`mammoclip.phantoms.realscale.write_rehearsal`'s files (VinDr: 20 000 + 20 486 rows;
    RSNA: 54 706 rows; their preprocessing manifests) under ``work_dir`` and times, one step at a time on
    the previous step's output: VinDr's read + validation, the manifest read, the box mapping, the row /
    image / image-label tables, then the whole :func:`mammoclip.stages.build_vindr_tables`; RSNA's
    read + validation, the manifest read, the folds, the manifest join, then the whole
    :func:`mammoclip.stages.build_rsna_folds`. Log records below ERROR are muted while timing.
    Columns: ``dataset, step, rows_in, output`` (what the step returned), ``median_s, min_s, rows_per_s``.
    """
    import logging
    import statistics
    from typing import TypeVar

    from mammoclip.annotations.rsna import join_rsna_manifest, make_rsna_folds, read_rsna_train
    from mammoclip.annotations.vindr import (
        map_boxes_to_png,
        read_vindr_annotations,
        vindr_image_label_table,
        vindr_image_table,
        vindr_row_table,
    )
    from mammoclip.phantoms.realscale import write_rehearsal
    from mammoclip.preprocess import read_manifest
    from mammoclip.stages import build_rsna_folds, build_vindr_tables

    T = TypeVar("T")
    work_dir = Path(work_dir)
    files = write_rehearsal(work_dir / "data", manifest_dir=work_dir / "manifests", seed=seed)
    rows: list[dict] = []

    def timed(dataset: str, step: str, rows_in: int, fn: Callable[[], T], describe: Callable[[T], str]) -> T:
        times = []
        for _ in range(max(int(repeats), 1)):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append(
            {
                "dataset": dataset,
                "step": step,
                "rows_in": rows_in,
                "output": describe(out),
                "median_s": median,
                "min_s": min(times),
                "rows_per_s": rows_in / median,
            }
        )
        return out

    def n_rows(what: str) -> Callable[[pd.DataFrame], str]:
        return lambda frame: f"{len(frame)} {what}"

    def sizes(tables: dict[str, pd.DataFrame]) -> str:
        return ", ".join(f"{len(table)} {name}" for name, table in tables.items())

    logger = logging.getLogger("mammoclip")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        breast_csv, findings_csv, vindr_manifest = (
            files["vindr_breast"], files["vindr_findings"], files["vindr_manifest"]
        )  # fmt: skip
        n_images, n_findings = PAPER_METADATA_ROWS["vindr"], PAPER_METADATA_ROWS["vindr_findings"]
        breast, findings = timed(
            "vindr", "read + validate CSVs", n_images + n_findings,
            lambda: read_vindr_annotations(breast_csv, findings_csv),
            lambda out: f"{len(out[0])} images, {len(out[1])} finding rows",
        )  # fmt: skip
        manifest = timed(
            "vindr", "read manifest", n_images, lambda: read_manifest(vindr_manifest), n_rows("images")
        )
        mapped = timed(
            "vindr", "map boxes to PNG", n_findings, lambda: map_boxes_to_png(findings, manifest),
            n_rows("finding rows"),
        )  # fmt: skip

        def vindr_tables() -> dict[str, pd.DataFrame]:
            row_table = vindr_row_table(breast, mapped, manifest, n_folds=vindr_folds, seed=fold_seed)
            images, boxes = vindr_image_table(breast, mapped, manifest, n_folds=vindr_folds, seed=fold_seed)
            labels = vindr_image_label_table(images)
            return {"rows": row_table, "images": images, "boxes": boxes, "image_labels": labels}

        timed("vindr", "row/image/label tables", len(mapped), vindr_tables, sizes)
        timed(
            "vindr", "all: build_vindr_tables", n_images + n_findings,
            lambda: build_vindr_tables(
                breast_csv, findings_csv, vindr_manifest, n_folds=vindr_folds, seed=fold_seed
            ),
            sizes,
        )  # fmt: skip

        n_train = PAPER_METADATA_ROWS["rsna"]
        train_csv, rsna_manifest = files["rsna_train"], files["rsna_manifest"]
        train = timed(
            "rsna", "read + validate train.csv", n_train, lambda: read_rsna_train(train_csv), n_rows("images")
        )
        png_manifest = timed(
            "rsna", "read manifest", n_train, lambda: read_manifest(rsna_manifest), n_rows("images")
        )
        folds = timed(
            "rsna", "folds (StratifiedGroupKFold)", n_train,
            lambda: make_rsna_folds(train, n_folds=rsna_folds, seed=fold_seed), n_rows("images"),
        )  # fmt: skip
        timed(
            "rsna",
            "manifest join",
            n_train,
            lambda: join_rsna_manifest(folds, png_manifest),
            n_rows("images"),
        )
        timed(
            "rsna", "all: build_rsna_folds", n_train,
            lambda: build_rsna_folds(train_csv, rsna_manifest, n_folds=rsna_folds, seed=fold_seed),
            n_rows("images"),
        )  # fmt: skip
    finally:
        logger.setLevel(level)
    return pd.DataFrame(rows)
