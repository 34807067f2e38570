"""`mammoclip embed` / `mammoclip score` end to end on a tiny checkpoint; one-line errors on bad input."""

import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from mammoclip.cli import main
from mammoclip.inference import read_embeddings


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("p1/a", "p1/1.2.3", "p2/c"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{name}.png"), rng.integers(0, 255, (64, 40), dtype=np.uint8))
    return folder


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """Run the command line in-process (imports are shared, so this is fast)."""

    def invoke(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return invoke


def test_embed_writes_raw_and_projected_embeddings(tiny_clip_checkpoint, images, tmp_path, run):
    out = tmp_path / "e.parquet"
    result = run(
        "embed", tiny_clip_checkpoint, images, "-o", out, "--height", 64, "--width", 40, "--batch-size", 2
    )
    assert result.returncode == 0, result.stderr
    ids, raw, projected, meta = read_embeddings(out)
    assert ids == ["1.2.3", "a", "c"]
    assert raw.shape[0] == 3 and projected.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, rtol=1e-5)
    assert meta["checkpoint"] == str(tiny_clip_checkpoint.resolve()) and meta["n_images"] == 3
    # batch size does not change the numbers
    out1 = tmp_path / "e1.npz"
    assert (
        run("embed", tiny_clip_checkpoint, images, "-o", out1, "--height", 64, "--width", 40).returncode == 0
    )
    np.testing.assert_allclose(read_embeddings(out1)[2], projected, atol=1e-5)


def test_score_gives_probabilities_per_task(tiny_clip_checkpoint, images, tmp_path, run):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(
        "mass: {absent: [no mass], present: [mass, a mass is seen]}\n"
        "calc: {absent: [no calcification], present: [calcification]}\n"
    )
    out = tmp_path / "s.csv"
    result = run(
        "score",
        tiny_clip_checkpoint,
        images,
        "--prompts-file",
        prompts,
        "-o",
        out,
        "--height",
        64,
        "--width",
        40,
    )
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(out, dtype={"image_id": str})
    assert len(scores) == 3 * 2 * 2
    sums = scores.groupby(["image_id", "task"])["probability"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-6)
    assert (scores.groupby(["image_id", "task"])["predicted"].sum() == 1).all()
    pair = tmp_path / "pair.csv"
    assert (
        run(
            "score",
            tiny_clip_checkpoint,
            images,
            "--prompts",
            "no mass",
            "mass",
            "-o",
            pair,
            "--height",
            64,
            "--width",
            40,
        ).returncode
        == 0
    )
    assert set(pd.read_csv(pair)["class"]) == {"no mass", "mass"}
    assert set(scores["class"]) == {"absent", "present"}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad_checkpoint", "not a PyTorch checkpoint"),
        ("empty_folder", "no images found"),
        ("unreadable_image", "not a readable PNG"),
        ("one_prompt", "at least two prompts"),
    ],
)
def test_bad_input_gives_one_line_error(case, message, tiny_clip_checkpoint, images, tmp_path, run):
    checkpoint, source, extra = tiny_clip_checkpoint, images, []
    if case == "bad_checkpoint":
        checkpoint = tmp_path / "model.tar"
        checkpoint.write_text("not a checkpoint")
    elif case == "empty_folder":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "unreadable_image":
        source = tmp_path / "broken.png"
        source.write_bytes(b"\x89PNG broken")
    command = "score" if case == "one_prompt" else "embed"
    if command == "score":
        extra = ["--prompts", "mass"]
    result = run(command, checkpoint, source, "-o", tmp_path / "out.parquet", *extra)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mammoclip: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_console_help_has_examples():
    result = subprocess.run(
        [sys.executable, "-m", "mammoclip.cli", "embed", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "example" in result.stdout and "mammoclip embed" in result.stdout
