"""Image listing from the datasets' metadata CSVs, path templates and sharding."""

import pandas as pd
import pytest

from mammoclip.config import load_config
from mammoclip.datasets import (
    IMAGE_TABLE_COLUMNS,
    DatasetError,
    check_dataset_files,
    list_images,
    read_metadata,
    resolve_dataset,
    select_shard,
)


def _settings(**overrides):
    return load_config({"datasets": {"vindr": dict(overrides), "rsna": dict(overrides)}})["datasets"]


def test_vindr_phantom_spec_and_listing(tmp_path):
    spec = resolve_dataset("vindr", _settings()["vindr"], tmp_path / "phantoms")
    assert spec.root == tmp_path / "phantoms" / "vindr"
    assert spec.metadata_csv == spec.root / "breast-level_annotations.csv"
    metadata = pd.DataFrame(
        {
            "study_id": ["s1", "s1"],
            "image_id": ["a", "b"],
            "laterality": ["L", "R"],
            "view_position": ["CC", "MLO"],
        }
    )
    images = list_images(spec, metadata, png_root=tmp_path / "png")
    assert list(images.columns) == IMAGE_TABLE_COLUMNS
    assert images["source_path"].tolist() == [
        str(spec.root / "images/s1/a.dicom"),
        str(spec.root / "images/s1/b.dicom"),
    ]
    assert images["png_path"].tolist() == [str(tmp_path / "png/s1/a.png"), str(tmp_path / "png/s1/b.png")]
    assert images["patient_id"].tolist() == ["s1", "s1"]
    assert images["view"].tolist() == ["CC", "MLO"]


def test_png_release_is_read_in_place(tmp_path):
    (tmp_path / "rsna").mkdir()
    settings = _settings(source="png", root=str(tmp_path / "rsna"))["rsna"]
    spec = resolve_dataset("rsna", settings, "unused")
    assert not spec.converts
    metadata = pd.DataFrame(
        {"patient_id": ["10"], "image_id": ["462822612"], "laterality": ["L"], "view": ["CC"]}
    )
    images = list_images(spec, metadata, png_root=tmp_path / "out")
    expected = str(tmp_path / "rsna" / "train_images_png/10/462822612.png")
    assert images.loc[0, "source_path"] == expected == images.loc[0, "png_path"]


def test_rsna_integer_ids_stay_strings(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("site_id,patient_id,image_id,laterality,view\n2,10006,462822612,L,CC\n")
    metadata = read_metadata(csv)
    assert metadata.loc[0, "image_id"] == "462822612"


def test_errors_name_the_file_and_column(tmp_path):
    spec = resolve_dataset("rsna", _settings()["rsna"], tmp_path)
    with pytest.raises(DatasetError, match=r"train.csv: missing column\(s\) view"):
        list_images(
            spec,
            pd.DataFrame({"patient_id": ["1"], "image_id": ["2"], "laterality": ["L"]}),
            png_root=tmp_path,
        )
    duplicated = pd.DataFrame(
        {"patient_id": ["1", "1"], "image_id": ["2", "2"], "laterality": ["L"] * 2, "view": ["CC"] * 2}
    )
    with pytest.raises(DatasetError, match="1 duplicated image id"):
        list_images(spec, duplicated, png_root=tmp_path)
    bad_template = resolve_dataset(
        "rsna", _settings(dicom_template="{site}/{image_id}.dcm")["rsna"], tmp_path
    )
    with pytest.raises(DatasetError, match="names column 'site'"):
        list_images(bad_template, duplicated.iloc[:1], png_root=tmp_path)


def test_missing_metadata_csv_of_real_data(tmp_path):
    (tmp_path / "vindr").mkdir()
    spec = resolve_dataset("vindr", _settings(source="dicom", root=str(tmp_path / "vindr"))["vindr"], "x")
    with pytest.raises(
        DatasetError, match="config key 'datasets.vindr.metadata_csv': file .* does not exist"
    ):
        check_dataset_files(spec)
    phantom = resolve_dataset("vindr", _settings()["vindr"], tmp_path / "nothing-yet")
    check_dataset_files(phantom)  # phantoms are made by the workflow, so nothing to check yet


@pytest.mark.parametrize(("n_rows", "n_shards"), [(10, 3), (3, 5), (0, 2), (7, 1)])
def test_shards_partition_the_table_in_order(n_rows, n_shards):
    table = pd.DataFrame({"image_id": [str(i) for i in range(n_rows)]})
    parts = [select_shard(table, s, n_shards) for s in range(n_shards)]
    assert sum(len(p) for p in parts) == n_rows
    assert pd.concat(parts)["image_id"].tolist() == table["image_id"].tolist()
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    with pytest.raises(ValueError, match="outside"):
        select_shard(table, n_shards, n_shards)
