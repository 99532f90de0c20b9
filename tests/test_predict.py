"""`retrain predict` end to end: any image Pillow reads, tables and JSON, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fit_fixtures import invoke
from run_fixtures import LABELS, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """One image per awkward kind, each with a right answer among the toy's colours."""
    folder = tmp_path_factory.mktemp("images")
    made = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        made[name] = folder / name
        image.save(made[name], **kwargs)

    save("grey.png", Image.new("L", (45, 30), 128))  # grayscale, not square
    save("grey-alpha.png", Image.new("LA", (32, 32), (128, 200)))
    save("magenta-rgba.png", Image.new("RGBA", (300, 120), (255, 0, 255, 90)))  # alpha dropped, as TF does
    save("yellow.gif", Image.new("RGB", (20, 20), (255, 255, 0)).convert("P"))  # palette
    frames = [Image.new("RGB", (16, 16), rgb).convert("P") for rgb in ((0, 255, 255), (255, 0, 255))]
    save("cyan-animated.gif", frames[0], save_all=True, append_images=frames[1:])  # first frame counts
    transparent = Image.new("P", (24, 24), 0)
    transparent.putpalette([255, 255, 0] + [0, 0, 0] * 255)
    save("yellow-transparent.gif", transparent, transparency=1)
    save("grey16.png", Image.fromarray(np.full((32, 32), 128 * 256 + 77, np.uint16)))  # 16-bit
    save("cyan.jpg", Image.new("RGB", (640, 480), (0, 255, 255)), quality=95)  # big
    save("magenta.bmp", Image.new("RGB", (8, 8), (255, 0, 255)))
    return made


def expected_label(name: str) -> str:
    return next(label for label in LABELS if name.startswith(label))


def test_any_image_gets_its_colour(run, images):
    """Grayscale, grayscale with alpha, RGBA, palette and animated GIF, 16-bit PNG, a large
    JPEG and a BMP each get the toy's right label, one line each in the order given."""
    paths = [str(p) for p in images.values()]
    result = invoke(["predict", str(run), *paths])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("file")
    assert len(lines) == 1 + len(paths)
    for line, (name, path) in zip(lines[1:], images.items()):
        assert line.startswith(str(path))
        top = line[len(str(path)):].split()
        assert top[0] == expected_label(name), line
        assert len(top) == 6  # top-3 labels with probabilities
        assert [float(p) for p in top[1::2]] == sorted((float(p) for p in top[1::2]), reverse=True)


def test_json_and_top_k(run, images):
    """--json: one object per image with its top-k labels and probabilities summing to at
    most 1; --top-k larger than the classes gives every class."""
    result = invoke(["predict", str(run), str(images["yellow.gif"]), "--json", "--top-k", "9"])
    assert result.exit_code == 0, (result.output, result.exception)
    [entry] = json.loads(result.stdout)
    assert entry["file"] == str(images["yellow.gif"])
    assert [p["label"] for p in entry["predictions"]][0] == "yellow"
    assert sorted(p["label"] for p in entry["predictions"]) == list(LABELS)
    assert sum(p["probability"] for p in entry["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_bad_paths_do_not_stop_the_rest(run, images, tmp_path):
    """A missing path and an undecodable file each get one clear error line on stderr; the
    other images are still classified; the exit code is 1. A folder is expanded to its
    image files, recursively, skipping other files."""
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    Image.open(images["cyan.jpg"]).save(folder / "sub" / "cyan.png")
    (folder / "notes.txt").write_text("not an image")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    missing = tmp_path / "missing.jpg"
    result = invoke(["predict", str(run), str(missing), str(corrupt), str(images["grey.png"]), str(folder),
                     "--json"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert "no such file or folder" in errors[0] and str(missing) in errors[0]
    assert "cannot read this image" in errors[1] and str(corrupt) in errors[1]
    entries = json.loads(result.stdout)
    assert [e["file"] for e in entries][:3] == [str(missing), str(corrupt), str(images["grey.png"])]
    assert "error" in entries[0] and "error" in entries[1]
    assert entries[2]["predictions"][0]["label"] == "grey"
    found = {Path(e["file"]).name: e["predictions"][0]["label"] for e in entries[3:]}
    assert found == {"cyan.png": "cyan"}
