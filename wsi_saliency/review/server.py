"""A local web server for a review site: its files, and slide tiles made on demand.

``GET /`` is ``OUT/index.html``; any other path is a file under ``OUT`` (no hidden names, no
``..``, nothing that resolves outside ``OUT``, no name or path too long for the filesystem:
those are 404). Deep Zoom requests of a slide
page, ``/<stem>/review/slide.dzi`` and ``/<stem>/review/slide_files/<level>/<col>_<row>.jpeg``,
are answered from disk when ``review`` wrote the tiles and otherwise made from the slide
named in ``<stem>/review/manifest.json``, with a few slides kept open. Bind to 127.0.0.1 (the
default): the server is for looking at results on this machine, not for publishing them.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from wsi_saliency.errors import InputError, WsiSaliencyError
from wsi_saliency.review import deepzoom

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".dzi": "application/xml",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".h5": "application/x-hdf5",
}
_TILE = re.compile(r"^(\d+)/(\d+)_(\d+)\.jpeg$")
NAME_MAX = 255  # bytes in a file name (Linux, macOS): a longer URL segment is a 404


class SlideCache:
    """Deep Zoom generators of the most recently used ``size`` slides, safe across threads."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._open: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, slide_path: str):
        with self._lock:
            dz = self._open.get(slide_path)
            if dz is not None:
                self._open.move_to_end(slide_path)
                return dz
        dz = deepzoom.open_deepzoom(slide_path)  # outside the lock: opening can be slow
        with self._lock:
            self._open[slide_path] = dz
            self._open.move_to_end(slide_path)
            while len(self._open) > self.size:
                self._open.popitem(last=False)  # closed when the last reader lets go
        return dz


class ReviewServer(ThreadingHTTPServer):
    """Serves the review site in ``root``; ``url`` is where to point a browser."""

    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int], log: Callable[[str], None]):
        self.root = root.resolve()
        self.cache = SlideCache()
        self.log = log
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "wsi-saliency-review"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass  # no access log; errors are reported by _answer

    def _answer(self, send_body: bool) -> None:
        parts = _safe_parts(urlsplit(self.path).path)
        if parts is None:
            return self._status(HTTPStatus.NOT_FOUND, send_body)
        try:
            file = self._file(parts)
            body = file.read_bytes() if file is not None else None
        except OSError:  # a name or path too long, a loop, no permission: nothing to serve
            return self._status(HTTPStatus.NOT_FOUND, send_body)
        if file is not None and body is not None:
            return self._send(body, CONTENT_TYPES.get(file.suffix.lower()), send_body)
        body = self._deepzoom(parts)
        if body is None:
            return self._status(HTTPStatus.NOT_FOUND, send_body)
        self._send(*body, send_body)

    def _file(self, parts: list[str]) -> Path | None:
        """The file under the root that ``parts`` names (a folder: its ``index.html``), or None
        when there is none there or it resolves outside the root. Raises ``OSError``."""
        path = self.server.root.joinpath(*parts) if parts else self.server.root
        if path.is_dir():
            path = path / "index.html"
        resolved = path.resolve()
        if resolved.is_file() and resolved.is_relative_to(self.server.root):
            return resolved
        return None

    def _deepzoom(self, parts: list[str]) -> tuple[bytes, str] | None:
        """Tiles of ``<stem>/review/slide...`` made from the slide; None when not such a path."""
        if len(parts) < 3 or parts[1] != "review":
            return None
        manifest = self.server.root / parts[0] / "review" / "manifest.json"
        rest = "/".join(parts[2:])
        tile = _TILE.match(rest[len("slide_files/") :]) if rest.startswith("slide_files/") else None
        if rest != "slide.dzi" and tile is None:
            return None
        try:
            slide_path = json.loads(manifest.read_text())["slide_path"]
            dz = self.server.cache.get(slide_path)
            if tile is None:
                return dz.get_dzi(deepzoom.FORMAT).encode(), CONTENT_TYPES[".dzi"]
            level, col, row = (int(v) for v in tile.groups())
            return deepzoom.tile_jpeg(dz, level, col, row), CONTENT_TYPES[".jpeg"]
        except ValueError:  # a tile outside the pyramid
            return None
        except (OSError, KeyError, json.JSONDecodeError, WsiSaliencyError) as exc:
            self.server.log(f"cannot serve {self.path}: {exc}")
            return None

    def _send(self, body: bytes, content_type: str | None, send_body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _status(self, status: HTTPStatus, send_body: bool) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _safe_parts(url_path: str) -> list[str] | None:
    """The URL path's segments, or None when one is empty-ish, hidden, tries to escape or is
    longer than a file name can be (``NAME_MAX``, 255 bytes)."""
    parts = [unquote(p) for p in url_path.split("/")[1:]]
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing slash: the folder's index.html
    for part in parts:
        if not part or part.startswith(".") or any(ch in part for ch in "/\\\x00") or ":" in part:
            return None
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return None
    return parts


def make_server(
    out: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log: Callable[[str], None] = print,
) -> ReviewServer:
    """A server for the review site in ``out`` (not yet serving: call ``serve_forever``).

    ``port`` 0 picks a free port. ``InputError`` when ``out`` has no ``index.html`` or the
    address cannot be bound.
    """
    root = Path(out)
    if not (root / "index.html").is_file():
        raise InputError(f"{root} has no index.html: run 'wsi-saliency review {root}' first")
    try:
        return ReviewServer(root, (host, int(port)), log)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --port or --host"
        ) from None
