"""Download the official PatchCamelyon files: resumable, md5-checked, gunzipped in place.

Files come from Zenodo record 2546921 unless ``base_url`` (or the environment variable
``WSI_SALIENCY_PCAM_URL``) names a mirror that serves the same file names. Each file goes to
``NAME.part`` (resumed with an HTTP ``Range`` request when the part exists), is checked
against its md5, then gunzipped to a temporary name and renamed to the final ``.h5``; so
a file with its final name is always complete, and a second run skips it.
Only the standard library is used for HTTP (:mod:`urllib`).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from wsi_saliency import __version__
from wsi_saliency.data.pcam import SPLITS
from wsi_saliency.errors import InputError, WsiSaliencyError

ZENODO_BASE_URL = "https://zenodo.org/record/2546921/files"
"""Zenodo record of PCam; a file is at ``{ZENODO_BASE_URL}/{name}?download=1``."""

ENV_URL = "WSI_SALIENCY_PCAM_URL"

# md5 of each file as served (the .h5.gz before gunzip; the csv as is).
# Source: the "Download" table of the README of github.com/basveeling/pcam. That table has
# the md5 values of the valid and test rows swapped; the author confirmed the copy/paste
# mismatch in basveeling/pcam issue #1, where md5sum of the real files gives the values
# below (also issue #4; torchvision made the same fix in pytorch/vision PR #6644). The meta
# csv values for valid/test are swapped likewise, following the md5sum listing in issue #4.
PCAM_FILES: dict[str, str] = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_test_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
    "camelyonpatch_level_2_split_train_meta.csv": "5a3dd671e465cfd74b5b822125e65b0a",
    "camelyonpatch_level_2_split_valid_meta.csv": "67589e00a4a37ec317f2d1932c7502ca",
    "camelyonpatch_level_2_split_test_meta.csv": "3455fd69135b66734e1008f3af684566",
}

_NAME_RE = re.compile(r"camelyonpatch_level_2_split_(train|valid|test)_(x|y|meta)\.")
_BLOCK = 1 << 20
_TIMEOUT_S = 60


def _split_of(name: str) -> str | None:
    match = _NAME_RE.match(name)
    return match.group(1) if match else None


def final_name(name: str) -> str:
    """The name a downloaded file ends up with: ``.h5.gz`` files are gunzipped to ``.h5``."""
    return name[:-3] if name.endswith(".gz") else name


def file_url(name: str, base_url: str | None = None) -> str:
    """URL of ``name``: on Zenodo by default, else ``{base_url}/{name}``."""
    base = base_url or os.environ.get(ENV_URL) or None
    if base is None:
        return f"{ZENODO_BASE_URL}/{name}?download=1"
    return f"{base.rstrip('/')}/{name}"


def planned_files(
    splits: Iterable[str] = SPLITS,
    *,
    files: Mapping[str, str] | None = None,
    meta: bool = False,
) -> dict[str, str]:
    """``{name: md5}`` of what :func:`download_pcam` fetches for ``splits``.

    From :data:`PCAM_FILES` by default: the x and y files of each split (and its meta csv
    with ``meta``). A ``files`` mapping replaces the table; its entries are kept when their
    split is among ``splits`` or their name has no split.
    """
    splits = list(splits)
    for split in splits:
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    table = PCAM_FILES if files is None else dict(files)
    chosen = {}
    for name, md5 in table.items():
        split = _split_of(name)
        if files is None and name.endswith("_meta.csv") and not meta:
            continue
        if split is None or split in splits:
            chosen[name] = md5.lower()
    return chosen


def md5_of(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, desc: str, enabled: bool):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _fetch(url: str, part: Path, *, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming from its current size when it exists."""
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"User-Agent": f"wsi-saliency/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urlopen(request, timeout=_TIMEOUT_S)  # noqa: S310 - http(s) URLs only
    except HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the part is whole (md5 decides)
            return
        raise WsiSaliencyError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the address "
            f"(--base-url or ${ENV_URL}) or try again later"
        ) from None
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WsiSaliencyError(
            f"cannot reach {url} ({reason}); check the network connection, or use a mirror "
            f"with --base-url or ${ENV_URL}"
        ) from None
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not match or int(match.group(1)) != offset:
                raise WsiSaliencyError(
                    f"download of {url} failed: the server resumed at {content_range!r}, not "
                    f"byte {offset}; delete {part} and run again"
                )
        else:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with (
                open(part, "ab" if resumed else "wb") as out,
                _progress(total, offset, part.name.removesuffix(".part"), progress) as bar,
            ):
                for block in iter(lambda: response.read(_BLOCK), b""):
                    out.write(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            raise WsiSaliencyError(
                f"download of {url} was interrupted ({exc}); run the command again to resume"
            ) from None
    if total is not None and part.stat().st_size < total:
        raise WsiSaliencyError(
            f"download of {url} ended early ({part.stat().st_size} of {total} bytes); "
            "run the command again to resume"
        )


def _gunzip(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, _BLOCK)
    except (OSError, EOFError, zlib.error) as exc:
        tmp.unlink(missing_ok=True)
        src.unlink(missing_ok=True)
        raise WsiSaliencyError(
            f"cannot gunzip {src} ({exc}); it was deleted, run the command again"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


def _is_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".h5":
        import h5py

        return bool(h5py.is_hdf5(path))
    return True


def download_pcam(
    dest: str | os.PathLike[str],
    *,
    splits: Iterable[str] = SPLITS,
    base_url: str | None = None,
    files: Mapping[str, str] | None = None,
    progress: bool = True,
    meta: bool = False,
) -> list[Path]:
    """Download the PCam files of ``splits`` into ``dest`` and return their final paths.

    ``files`` (``{name: md5}``) replaces the built-in table :data:`PCAM_FILES` (tests and
    mirrors); ``meta`` adds the per-split meta csv files of the built-in table. Files
    already complete in ``dest`` are skipped; a ``NAME.part`` left by an interrupted run is
    resumed. A download whose md5 differs is deleted and raises :class:`WsiSaliencyError`
    naming the file; so do HTTP and network failures (with the URL).
    """
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder to download PCam into")
    wanted = planned_files(splits, files=files, meta=meta)
    folder.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    for name, md5 in wanted.items():
        final = folder / final_name(name)
        if _is_complete(final):
            done.append(final)
            continue
        final.unlink(missing_ok=True)  # a leftover that is not a whole file
        fetched = folder / name
        if fetched.is_file() and md5_of(fetched) != md5:
            fetched.unlink()
        if not fetched.is_file():
            part = folder / f"{name}.part"
            url = file_url(name, base_url)
            _fetch(url, part, progress=progress)
            actual = md5_of(part)
            if actual != md5:
                part.unlink()
                raise WsiSaliencyError(
                    f"checksum mismatch for {name} from {url}: md5 {actual}, expected {md5}; "
                    "the bad download was deleted, run the command again (or check the mirror)"
                )
            os.replace(part, fetched)
        if fetched != final:
            _gunzip(fetched, final)
            fetched.unlink()
        done.append(final)
    return done
