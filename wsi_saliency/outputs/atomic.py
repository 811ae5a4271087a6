"""Write to a temporary name beside the target, then rename: readers never see half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder (same suffix); renamed to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def ensure_writable_dir(out: str | Path) -> Path:
    """Create folder ``out`` and check that files can be written in it, before any work.

    ``InputError`` (one line) when it is a file or cannot be written.
    """
    from wsi_saliency.errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder: choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"cannot write to output folder {out} ({exc.strerror}): choose a writable --out"
        ) from None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if not np.isfinite(v) else v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """JSON with NaN/inf as null (valid JSON for every reader), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_plain(data), indent=2, sort_keys=False))
    return Path(path)
