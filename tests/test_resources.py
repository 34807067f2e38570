"""Job sizes for the scheduler (mammoclip.resources) scale with the work the config describes."""

from mammoclip.resources import (
    classifier_runtime,
    conversion_resources,
    count_rows,
    detector_runtime,
    embedding_resources,
    grow,
    table_resources,
)


def test_count_rows_reads_the_csv_or_falls_back(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6\n")
    assert count_rows(path, default=99) == 3
    assert count_rows(tmp_path / "missing.csv", default=99) == 99


def test_conversion_scales_with_images_per_shard_and_workers():
    # RSNA: 54 706 images in 64 shards on 2 workers -> 855 images, 2 s each / 2 workers = 855 s -> 15 min
    assert conversion_resources(54_706, 64, 2) == {"mem_mb": 2000, "runtime": 25}
    assert conversion_resources(54_706, 64, 4)["runtime"] == 18
    assert conversion_resources(160, 2, 2)["runtime"] == 12


def test_tables_embedding_and_classifier_sizes():
    assert table_resources(54_706) == {"mem_mb": 2094, "runtime": 11}
    # 20 000 VinDr images at 1520 x 912 on a GPU: 2 x 20 000 x 0.02 s = 800 s
    assert embedding_resources(20_000, 1520 * 912, 1) == {"mem_mb": 8000, "runtime": 24}
    assert embedding_resources(160, 256 * 160, 0)["runtime"] == 10 + 2  # 0.05 floor: 2*160*0.25 s = 80 s
    ft = classifier_runtime(
        images=16_391, fraction=1.0, epochs=30, mode="ft", pixels=1520 * 912, gpus=1, cached=False
    )
    lp = classifier_runtime(
        images=16_391, fraction=0.1, epochs=30, mode="lp", pixels=1520 * 912, gpus=1, cached=False
    )
    assert ft == 15 + 3074 and lp == 15 + 99  # 1.5 x 30 x 16 391 x 0.25 s; 10 % and 0.08 s
    assert classifier_runtime(images=10, fraction=1, epochs=1, mode="lp", pixels=1, gpus=0, cached=True) == 15


def test_detector_runtime_scales_with_images_epochs_mode_and_input():
    full = dict(images=16_000, select_images=3_200, fraction=1.0, epochs=120, pixels=512 * 512, gpus=1)
    # 1.5 x 120 x 0.05 s x (16 000 training + 3 200 / 3 selection images); frozen encoder 0.03 s
    assert detector_runtime(**full, mode="ft") == 15 + 2560
    assert detector_runtime(**full, mode="freeze") == 15 + 1536
    assert detector_runtime(**{**full, "fraction": 0.1}, mode="ft") < detector_runtime(**full, mode="ft") / 5
    # the demo: 160 images at 256 x 160 on the CPU, 8 epochs
    demo = dict(images=160, select_images=32, fraction=1.0, epochs=8, pixels=256 * 160, gpus=0)
    assert detector_runtime(**demo, mode="ft") == 15 + 6


def test_grow_multiplies_by_the_attempt_for_numbers_and_functions():
    assert grow(4000)(None, attempt=1) == 4000 and grow(4000)(None, attempt=3) == 12000
    per_wildcard = grow(lambda wc: {"a": 10, "b": 20}[wc])
    assert per_wildcard("b", 2, attempt=2) == 40
    per_threads = grow(lambda wc, threads: 100 * threads)
    assert per_threads("x", 4, attempt=1) == 400 and per_threads("x", 4, attempt=2) == 800
