"""mammoclip.io: atomic writes leave the complete new file or the old one, and no temporary file."""

from __future__ import annotations

import pytest

from mammoclip.io import atomic_copy, atomic_path, atomic_write


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("mode", "data"), [("w", "a,b\n1,2\nü\n"), ("wb", b"\x89PNG\r\n\x1a\n\x00\xff")])
def test_bytes_equal_a_plain_write_and_no_temporary_file_remains(tmp_path, mode, data):
    plain = tmp_path / "plain"
    with open(plain, mode) as handle:
        handle.write(data)
    out = tmp_path / "sub" / "atomic.csv"
    with atomic_write(out, mode) as handle:
        handle.write(data)
    assert out.read_bytes() == plain.read_bytes()
    assert _siblings(out.parent) == ["atomic.csv"]


def test_open_kwargs_are_passed_on(tmp_path):
    out = tmp_path / "latin1.txt"
    with atomic_write(out, "w", encoding="latin-1") as handle:
        handle.write("é")
    assert out.read_bytes() == b"\xe9"


def test_an_exception_keeps_the_previous_file_and_removes_the_temporary_one(tmp_path):
    out = tmp_path / "table.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(out) as handle:
        handle.write("half of the new")
        raise RuntimeError("boom")
    assert out.read_text() == "old\n"
    assert _siblings(tmp_path) == ["table.csv"]


def test_an_exception_without_a_previous_file_leaves_nothing(tmp_path):
    out = tmp_path / "new.bin"
    with pytest.raises(ValueError), atomic_write(out, "wb") as handle:
        handle.write(b"x")
        raise ValueError
    assert _siblings(tmp_path) == []


def test_read_modes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="write mode"), atomic_write(tmp_path / "x", "r"):
        pass


def test_atomic_path_with_a_named_temporary_file(tmp_path):
    out = tmp_path / "model.pt"
    with atomic_path(out, temporary=out.with_suffix(".tmp")) as tmp:
        assert tmp.name == "model.tmp"
        tmp.write_bytes(b"weights")
    assert out.read_bytes() == b"weights" and _siblings(tmp_path) == ["model.pt"]
    elsewhere = tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="not in the folder"), atomic_path(out, temporary=elsewhere):
        pass
    with pytest.raises(OSError), atomic_path(out) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")
    assert out.read_bytes() == b"weights" and _siblings(tmp_path) == ["model.pt"]


def test_atomic_copy(tmp_path):
    src = tmp_path / "src.png"
    src.write_bytes(bytes(range(256)) * 3)
    dst = atomic_copy(src, tmp_path / "out" / "dst.png")
    assert dst.read_bytes() == src.read_bytes()
    assert _siblings(tmp_path / "out") == ["dst.png"]
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.png", dst)
    assert dst.read_bytes() == src.read_bytes() and _siblings(tmp_path / "out") == ["dst.png"]
