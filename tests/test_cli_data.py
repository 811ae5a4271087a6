"""``wsi-saliency download pcam``, ``convert`` and ``inspect-data`` through typer's CliRunner."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from wsi_saliency.cli import app
from wsi_saliency.data import download
from wsi_saliency.data.pcam import split_paths, write_pcam_split

runner = CliRunner()


def run(*args: str):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int = 2, *needles: str) -> None:  # noqa: ANN001
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def make_image_folders(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        for label in ("0", "1"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"p{i}.jpg", quality=90)


def write_raw(folder: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    xp, yp = split_paths(folder, split)
    with h5py.File(xp, "w") as f:
        f.create_dataset("x", data=x)
    with h5py.File(yp, "w") as f:
        f.create_dataset("y", data=y)


def test_help_lists_the_data_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("download", "convert", "inspect-data"):
        assert command in result.stdout
    assert "pcam" in run("download", "--help").stdout


def test_convert_then_inspect(tmp_path: Path) -> None:
    make_image_folders(tmp_path / "imgs")
    result = run("inspect-data", tmp_path / "imgs")
    assert result.exit_code == 0, result.stderr
    assert "layout folders" in result.stdout
    assert "train" in result.stdout and "12" in result.stdout

    result = run("convert", tmp_path / "imgs", tmp_path / "pcam", "--seed", "3", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert "train 12, valid 12 patches" in result.stdout

    result = run("inspect-data", tmp_path / "pcam", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == "pcam"
    assert summary["splits"] == {
        "train": {"n": 12, "positives": 6, "negatives": 6},
        "valid": {"n": 12, "positives": 6, "negatives": 6},
    }
    text = run("inspect-data", tmp_path / "pcam").stdout
    assert "layout pcam" in text and "50.0%" in text


def test_convert_carves_valid_with_fraction(tmp_path: Path) -> None:
    make_image_folders(tmp_path / "imgs", per_class=10)
    import shutil

    shutil.rmtree(tmp_path / "imgs" / "valid")
    result = run("convert", tmp_path / "imgs", tmp_path / "out", "--valid-fraction", "0.3")
    assert result.exit_code == 0, result.stderr
    assert "train 14, valid 6 patches" in result.stdout


@pytest.mark.parametrize(
    ("setup", "needles"),
    [
        ("missing_y", ("camelyonpatch_level_2_split_valid_y.h5 is missing",)),
        ("length", ("holds 5 labels but the x file holds 4 patches",)),
        ("shape", ("'x' has shape (4, 96, 96, 1)", "_train_x.h5")),
        ("dtype", ("'x' has dtype float64", "_train_x.h5")),
        ("labels", ("label 3 at row 1 is not 0 or 1", "_train_y.h5")),
    ],
)
def test_inspect_data_rejects_broken_pcam(tmp_path: Path, setup: str, needles) -> None:  # noqa: ANN001
    x = np.zeros((4, 96, 96, 3), np.uint8)
    y = np.array([0, 1, 0, 1], np.uint8)
    if setup == "missing_y":
        write_pcam_split(tmp_path, "train", x, y)
        write_pcam_split(tmp_path, "valid", x, y)
        split_paths(tmp_path, "valid")[1].unlink()
    elif setup == "length":
        write_raw(tmp_path, "train", x, np.zeros(5, np.uint8))
    elif setup == "shape":
        write_raw(tmp_path, "train", np.zeros((4, 96, 96, 1), np.uint8), y)
    elif setup == "dtype":
        write_raw(tmp_path, "train", x.astype(np.float64), y)
    elif setup == "labels":
        write_raw(tmp_path, "train", x, np.array([0, 3, 1, 1], np.uint8))
    assert_one_line_error(run("inspect-data", tmp_path), 2, *needles)


def test_convert_names_an_unreadable_image(tmp_path: Path) -> None:
    make_image_folders(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "train" / "1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run("convert", tmp_path / "imgs", tmp_path / "out")
    assert_one_line_error(result, 2, "cannot read image", "corrupt.png")
    assert not [p for p in (tmp_path / "out").glob("*.h5")]


def test_bad_options_and_paths(tmp_path: Path) -> None:
    make_image_folders(tmp_path / "imgs", per_class=1)
    assert_one_line_error(
        run("convert", tmp_path / "imgs", tmp_path / "o", "--valid-fraction", "2"),
        2,
        "--valid-fraction must be in [0, 1)",
    )
    assert_one_line_error(
        run("convert", tmp_path / "imgs", tmp_path / "o", "--workers", "0"), 2, "--workers"
    )
    assert_one_line_error(run("inspect-data", tmp_path / "nope"), 2, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("inspect-data", tmp_path / "empty"), 2, "accepted layouts")
    assert_one_line_error(
        run("download", "pcam", tmp_path / "d", "--split", "val"), 2, "unknown split 'val'"
    )


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback static file server over a folder (no Range support: a plain server)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # the CLI's stderr must stay one line
            pass

    handler = partial(Quiet, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.network
def test_download_pcam_command(file_server, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    url, served = file_server
    made = tmp_path / "made"
    write_pcam_split(made, "valid", np.zeros((3, 96, 96, 3), np.uint8), [0, 1, 1])
    table = {}
    for path in split_paths(made, "valid"):
        body = gzip.compress(path.read_bytes())
        (served / f"{path.name}.gz").write_bytes(body)
        table[f"{path.name}.gz"] = hashlib.md5(body).hexdigest()
    monkeypatch.setattr(download, "PCAM_FILES", table)
    result = run("download", "pcam", tmp_path / "dest", "--split", "valid", "--base-url", url)
    assert result.exit_code == 0, result.stderr
    assert "2 PCam files ready" in result.stdout
    summary = json.loads(run("inspect-data", tmp_path / "dest", "--json").stdout)
    assert summary["splits"]["valid"] == {"n": 3, "positives": 2, "negatives": 1}

    (served / "camelyonpatch_level_2_split_valid_x.h5.gz").unlink()
    for path in split_paths(tmp_path / "dest", "valid"):
        path.unlink()
    result = run("download", "pcam", tmp_path / "dest", "--split", "valid", "--base-url", url)
    assert_one_line_error(result, 1, f"{url}/camelyonpatch_level_2_split_valid_x.h5.gz", "404")
