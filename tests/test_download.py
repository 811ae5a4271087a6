"""Downloading PCam files from a real HTTP server on 127.0.0.1 (with Range support)."""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.data import download
from wsi_saliency.data.download import (
    PCAM_FILES,
    download_pcam,
    file_url,
    final_name,
    planned_files,
)
from wsi_saliency.data.pcam import open_pcam, split_paths, write_pcam_split
from wsi_saliency.errors import InputError, WsiSaliencyError


@dataclass
class Served:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def make_handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            name = self.path.lstrip("/").split("?")[0].removeprefix("mirror/")
            range_header = self.headers.get("Range")
            served.requests.append((name, range_header))
            body = served.files.get(name)
            if body is None:
                self.send_error(404, "Not Found")
                return
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and served.honour_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                chunk = body[start:]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                chunk = body
                self.send_response(200)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(served))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/mirror", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def gz_split(tmp_path: Path, split: str, n: int = 40) -> tuple[dict[str, bytes], np.ndarray]:
    """Gzipped PCam x/y files of one small split, keyed by their official .h5.gz names."""
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 2, n).astype(np.uint8)
    folder = tmp_path / f"made-{split}"
    write_pcam_split(folder, split, x, y, compression=None)
    out = {}
    for path in split_paths(folder, split):
        out[path.name + ".gz"] = gzip.compress(path.read_bytes(), compresslevel=1)
    return out, y


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(body).hexdigest() for name, body in files.items()}


def test_checksum_table_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(PCAM_FILES) == 9
    assert all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in PCAM_FILES.values())
    assert len(set(PCAM_FILES.values())) == 9
    monkeypatch.delenv(download.ENV_URL, raising=False)
    assert file_url("camelyonpatch_level_2_split_valid_y.h5.gz") == (
        "https://zenodo.org/record/2546921/files/camelyonpatch_level_2_split_valid_y.h5.gz"
        "?download=1"
    )
    assert file_url("a.h5.gz", "http://m/x/") == "http://m/x/a.h5.gz"
    monkeypatch.setenv(download.ENV_URL, "http://env-mirror")
    assert file_url("a.h5.gz") == "http://env-mirror/a.h5.gz"
    assert final_name("camelyonpatch_level_2_split_test_x.h5.gz").endswith("_test_x.h5")
    assert set(planned_files(["valid"])) == {
        "camelyonpatch_level_2_split_valid_x.h5.gz",
        "camelyonpatch_level_2_split_valid_y.h5.gz",
    }
    assert len(planned_files(meta=True)) == 9
    with pytest.raises(InputError, match="unknown split 'val'"):
        planned_files(["val"])


@pytest.mark.network
def test_full_download_then_skip(server, tmp_path: Path) -> None:  # noqa: ANN001
    base, served = server
    served.files, labels = gz_split(tmp_path, "train")
    dest = tmp_path / "dest"
    paths = download_pcam(
        dest, splits=["train"], base_url=base, files=md5s(served.files), progress=False
    )
    assert paths == list(split_paths(dest, "train"))
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in paths)  # no .gz/.part
    with open_pcam(dest, "train") as split:
        np.testing.assert_array_equal(split.labels, labels)
    assert len(served.requests) == 2 and all(r is None for _, r in served.requests)
    # a second run finds both files complete and asks the server nothing
    assert (
        download_pcam(
            dest, splits=["train"], base_url=base, files=md5s(served.files), progress=False
        )
        == paths
    )
    assert len(served.requests) == 2


@pytest.mark.network
def test_resume_after_truncated_part(server, tmp_path: Path) -> None:  # noqa: ANN001
    base, served = server
    served.files, labels = gz_split(tmp_path, "valid", n=60)
    dest = tmp_path / "dest"
    dest.mkdir()
    x_name = "camelyonpatch_level_2_split_valid_x.h5.gz"
    cut = len(served.files[x_name]) // 3
    (dest / f"{x_name}.part").write_bytes(served.files[x_name][:cut])
    download_pcam(dest, splits=["valid"], base_url=base, files=md5s(served.files), progress=False)
    assert (x_name, f"bytes={cut}-") in served.requests
    with open_pcam(dest, "valid") as split:
        np.testing.assert_array_equal(split.labels, labels)
        assert split.n == 60


@pytest.mark.network
def test_server_ignoring_range_restarts(server, tmp_path: Path) -> None:  # noqa: ANN001
    base, served = server
    served.files, _ = gz_split(tmp_path, "test")
    served.honour_range = False
    dest = tmp_path / "dest"
    dest.mkdir()
    y_name = "camelyonpatch_level_2_split_test_y.h5.gz"
    (dest / f"{y_name}.part").write_bytes(b"garbage that must not be kept")
    download_pcam(dest, splits=["test"], base_url=base, files=md5s(served.files), progress=False)
    assert (y_name, "bytes=29-") in served.requests  # asked to resume, got the whole file
    with open_pcam(dest, "test") as split:
        assert split.n == 40


@pytest.mark.network
def test_complete_part_is_not_downloaded_again(server, tmp_path: Path) -> None:  # noqa: ANN001
    base, served = server
    served.files, _ = gz_split(tmp_path, "train", n=10)
    dest = tmp_path / "dest"
    dest.mkdir()
    for name, body in served.files.items():
        (dest / f"{name}.part").write_bytes(body)
    download_pcam(dest, splits=["train"], base_url=base, files=md5s(served.files), progress=False)
    assert all(r is not None for _, r in served.requests)  # only range requests, answered 416
    with open_pcam(dest, "train") as split:
        assert split.n == 10


@pytest.mark.network
def test_checksum_mismatch_deletes_the_download(server, tmp_path: Path) -> None:  # noqa: ANN001
    base, served = server
    served.files, _ = gz_split(tmp_path, "train")
    sums = md5s(served.files)
    sums["camelyonpatch_level_2_split_train_x.h5.gz"] = "0" * 32
    dest = tmp_path / "dest"
    with pytest.raises(WsiSaliencyError) as info:
        download_pcam(dest, splits=["train"], base_url=base, files=sums, progress=False)
    msg = str(info.value)
    assert msg.startswith("checksum mismatch for camelyonpatch_level_2_split_train_x.h5.gz")
    assert "expected 00000000000000000000000000000000" in msg and "\n" not in msg
    assert list(dest.iterdir()) == []


@pytest.mark.network
def test_not_found_names_the_url(server, tmp_path: Path) -> None:  # noqa: ANN001
    base, served = server
    with pytest.raises(WsiSaliencyError) as info:
        download_pcam(
            tmp_path / "d",
            splits=["test"],
            base_url=base,
            files={"camelyonpatch_level_2_split_test_x.h5.gz": "0" * 32},
            progress=False,
        )
    msg = str(info.value)
    assert f"{base}/camelyonpatch_level_2_split_test_x.h5.gz" in msg and "HTTP 404" in msg
    assert not any((tmp_path / "d").iterdir())


@pytest.mark.network
def test_env_mirror_and_bad_gzip(server, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    base, served = server
    body = b"not gzip at all"
    served.files = {"camelyonpatch_level_2_split_valid_y.h5.gz": body}
    monkeypatch.setenv(download.ENV_URL, base)
    with pytest.raises(WsiSaliencyError, match=r"cannot gunzip .*valid_y\.h5\.gz"):
        download_pcam(tmp_path / "d", splits=["valid"], files=md5s(served.files), progress=False)
    assert served.requests == [("camelyonpatch_level_2_split_valid_y.h5.gz", None)]
    assert not any((tmp_path / "d").iterdir())


@pytest.mark.network
def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    # port 9 on loopback (discard) is closed here: the connection is refused at once
    with pytest.raises(WsiSaliencyError, match=r"cannot reach http://127\.0\.0\.1:9/") as info:
        download_pcam(
            tmp_path / "d",
            splits=["test"],
            base_url="http://127.0.0.1:9",
            files={"camelyonpatch_level_2_split_test_y.h5.gz": "0" * 32},
            progress=False,
        )
    assert "\n" not in str(info.value)
