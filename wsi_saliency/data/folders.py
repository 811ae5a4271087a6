"""Image-folder and Kaggle layouts of PCam patches, converted to the official PCam HDF5 layout.

Three layouts are accepted wherever the tool takes training data:

``pcam``
    the official files, ``camelyonpatch_level_2_split_{split}_{x,y}.h5`` (see
    :mod:`wsi_saliency.data.pcam`);
``folders``
    ``ROOT/SPLIT/{0,1}/*.{png,jpg,jpeg,tif,tiff}``, the folder name being the label
    (``SPLIT`` is ``train``, ``valid`` or ``test``; ``val`` is read as ``valid``);
``kaggle``
    Kaggle's *Histopathologic Cancer Detection*: ``ROOT/train/*.tif`` and
    ``ROOT/train_labels.csv`` with header ``id,label`` (id = file stem).

When there is a train split but no valid split (always so for Kaggle) conversion carves a
seeded, per-class ``valid_fraction`` out of train. Every image must be 96x96; grey and RGBA
images are converted to RGB.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from wsi_saliency.data.pcam import PATCH_SIZE, SPLITS, PcamWriter, open_pcam, split_paths
from wsi_saliency.errors import DataError, InputError

Layout = Literal["pcam", "folders", "kaggle"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
SPLIT_DIR_NAMES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
CACHE_MARKER = "wsi_saliency_cache.json"
_BLOCK = 512  # images decoded per block: bounds memory to ~14 MB of patches per block

LAYOUTS_HELP = (
    "accepted layouts: PCam HDF5 files (camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5), "
    "image folders (ROOT/{train,valid,test}/{0,1}/*.png|jpg|tif), "
    "or Kaggle (ROOT/train/*.tif with ROOT/train_labels.csv)"
)

Item = tuple[Path, int]


def _as_dir(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    if not path.exists():
        raise InputError(f"{path} does not exist; give a folder of PCam data ({LAYOUTS_HELP})")
    if not path.is_dir():
        raise InputError(f"{path} is not a folder; give a folder of PCam data ({LAYOUTS_HELP})")
    return path


def _split_dirs(root: Path) -> dict[str, Path]:
    """``{split: folder}`` for the split folders of an image-folder layout that hold 0/ or 1/."""
    found: dict[str, Path] = {}
    for name, split in SPLIT_DIR_NAMES.items():
        folder = root / name
        if (folder / "0").is_dir() or (folder / "1").is_dir():
            if split in found:
                raise InputError(
                    f"{root} has both {found[split].name}/ and {name}/; keep one of them"
                )
            found[split] = folder
    return found


def _any_pcam_file(folder: Path, split: str) -> bool:
    return any(p.is_file() for p in split_paths(folder, split))


def detect_layout(root: str | os.PathLike[str]) -> Layout:
    """Which of the three accepted layouts ``root`` uses; :class:`InputError` when none.

    A folder with any official PCam file (even a split missing its x or y) is ``pcam``, so
    that opening it reports the missing file.
    """
    path = _as_dir(root)
    if any(_any_pcam_file(path, split) for split in SPLITS):
        return "pcam"
    if (path / "train_labels.csv").is_file() and (path / "train").is_dir():
        return "kaggle"
    if _split_dirs(path):
        return "folders"
    raise InputError(f"{path} holds no PCam data in a known layout; {LAYOUTS_HELP}")


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        Path(e.path)
        for e in os.scandir(folder)
        if e.is_file()
        and not e.name.startswith(".")
        and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    )


def _folder_items(root: Path) -> dict[str, list[Item]]:
    items: dict[str, list[Item]] = {}
    for split, folder in _split_dirs(root).items():
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in ("0", "1"):
                raise InputError(
                    f"{entry.path} is not a class folder; image folders are named 0 (normal) "
                    "or 1 (tumour)"
                )
        items[split] = [(p, label) for label in (0, 1) for p in _images_in(folder / str(label))]
        items[split].sort(key=lambda it: str(it[0]))
    return items


def _kaggle_items(root: Path) -> dict[str, list[Item]]:
    csv_path = root / "train_labels.csv"
    images = {p.stem: p for p in _images_in(root / "train")}
    items: list[Item] = []
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["id", "label"]:
            raise DataError(f"{csv_path} must start with the header 'id,label', found {header}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2 or row[1].strip() not in ("0", "1"):
                raise DataError(
                    f"{csv_path} line {line}: expected 'id,label' with label 0 or 1, got {row}"
                )
            stem = row[0].strip()
            if stem not in images:
                raise DataError(
                    f"{csv_path} line {line} names {root / 'train' / (stem + '.tif')}, which is "
                    "missing; restore the image or remove its line"
                )
            items.append((images[stem], int(row[1])))
    items.sort(key=lambda it: it[0].name)
    return {"train": items}


def list_items(root: str | os.PathLike[str]) -> tuple[Layout, dict[str, list[Item]]]:
    """The layout of ``root`` and, for image layouts, its ``(path, label)`` items per split.

    Items are sorted by path. For the ``pcam`` layout the dict is empty (nothing to list).
    """
    path = _as_dir(root)
    layout = detect_layout(path)
    if layout == "folders":
        return layout, _folder_items(path)
    if layout == "kaggle":
        return layout, _kaggle_items(path)
    return layout, {}


def _carve_valid(
    items: dict[str, list[Item]], valid_fraction: float, seed: int
) -> dict[str, list[Item]]:
    """Move a seeded, per-class ``valid_fraction`` of train into valid when valid is absent."""
    if not 0.0 <= valid_fraction < 1.0:
        raise InputError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    if "valid" in items or "train" not in items or valid_fraction == 0.0:
        return items
    rng = np.random.default_rng([seed, 1])
    train, valid = [], []
    for label in (0, 1):
        group = [it for it in items["train"] if it[1] == label]
        order = rng.permutation(len(group))
        k = int(round(len(group) * valid_fraction))
        valid += [group[i] for i in order[:k]]
        train += [group[i] for i in order[k:]]
    out = dict(items)
    out["train"] = sorted(train, key=lambda it: str(it[0]))
    out["valid"] = sorted(valid, key=lambda it: str(it[0]))
    return out


def load_patch(path: Path) -> np.ndarray:
    """Decode one image file to uint8 ``(96, 96, 3)`` RGB; :class:`DataError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.size != (PATCH_SIZE, PATCH_SIZE):
                raise DataError(
                    f"{path} is {im.size[0]}x{im.size[1]} pixels; PCam patches must be 96x96 "
                    "(crop or resize it, or remove it)"
                )
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot read image {path} ({reason}); replace or remove the file"
        ) from None
    if arr.shape != (PATCH_SIZE, PATCH_SIZE, 3):  # pragma: no cover - Pillow guarantees this
        raise DataError(f"{path} decodes to shape {arr.shape}; expected 96x96 RGB")
    return arr


def _blocks(seq: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def convert_to_pcam(
    root: str | os.PathLike[str],
    out_folder: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, int]:
    """Convert an image-folder or Kaggle dataset at ``root`` into PCam HDF5 files.

    Files are listed sorted, then shuffled with ``seed`` (so that HDF5 chunks mix classes)
    and decoded by ``workers`` threads in blocks streamed into :class:`PcamWriter`, so
    memory stays bounded whatever the dataset size. ``splits`` limits the splits written
    (default: all there are, plus a carved ``valid`` when only train exists and
    ``valid_fraction`` > 0). Returns the number of patches written per split. The same
    input, ``valid_fraction`` and ``seed`` give the same files.
    """
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    layout, items = list_items(root)
    if layout == "pcam":
        raise InputError(f"{root} is already in the PCam HDF5 layout; use it as it is")
    items = _carve_valid(items, valid_fraction, seed)
    wanted = list(items) if splits is None else list(splits)
    for split in wanted:
        if split not in items:
            have = ", ".join(sorted(items)) or "none"
            raise InputError(f"{root} has no {split!r} split (it has: {have})")
    out = Path(out_folder)
    counts: dict[str, int] = {}
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split in (s for s in SPLITS if s in wanted):
            split_items = items[split]
            order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(split_items))
            shuffled = [split_items[i] for i in order]
            with (
                PcamWriter(out, split) as writer,
                tqdm(
                    total=len(shuffled),
                    desc=f"convert {split}",
                    unit="patch",
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                blocks = list(_blocks(shuffled, _BLOCK))
                # Decode block i + 1 while block i is compressed and written.
                ahead = [pool.submit(load_patch, p) for p, _ in blocks[0]] if blocks else []
                current: list[Future[np.ndarray]] = []
                try:
                    for i, block in enumerate(blocks):
                        current = ahead
                        nxt = blocks[i + 1] if i + 1 < len(blocks) else []
                        ahead = [pool.submit(load_patch, p) for p, _ in nxt]
                        patches = np.stack([f.result() for f in current])
                        labels = np.array([label for _, label in block], np.uint8)
                        writer.append(patches, labels)
                        bar.update(len(block))
                except BaseException:
                    for future in (*current, *ahead):
                        future.cancel()
                    raise
            counts[split] = len(shuffled)
    return counts


def _default_cache_root() -> Path:
    env = os.environ.get("WSI_SALIENCY_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "wsi-saliency"
    return base / "pcam"


def _fingerprint(root: Path, items: dict[str, list[Item]]) -> tuple[int, int]:
    """Number of image files and the newest mtime (ns) among them and their folders."""
    count, newest = 0, 0
    folders: set[Path] = set()
    for split_items in items.values():
        for path, _ in split_items:
            count += 1
            newest = max(newest, path.stat().st_mtime_ns)
            folders.add(path.parent)
    for extra in (*folders, root / "train_labels.csv"):
        if extra.exists():
            newest = max(newest, extra.stat().st_mtime_ns)
    return count, newest


def cache_key(root: str | os.PathLike[str]) -> str:
    """Cache folder name for an image dataset: a hash of its resolved path, size and mtime."""
    resolved = Path(root).resolve()
    _, items = list_items(resolved)
    count, newest = _fingerprint(resolved, items)
    return hashlib.sha256(f"{resolved}\0{count}\0{newest}".encode()).hexdigest()[:20]


def ensure_pcam(
    root: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """A folder of PCam HDF5 files for the data at ``root``, whatever its layout.

    A PCam folder is returned as it is. Image folders and Kaggle data are converted once
    (``valid_fraction`` 0.1, seed 0) into ``<cache_dir>/<key>``, ``cache_dir`` defaulting to
    ``$WSI_SALIENCY_CACHE/pcam`` or ``~/.cache/wsi-saliency/pcam``; the key hashes the
    resolved path, file count and newest mtime, so edited data is converted again. A
    complete cache folder (it holds a marker written last) is reused.
    """
    path = _as_dir(root)
    layout = detect_layout(path)
    if layout == "pcam":
        return path
    base = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    target = base / cache_key(path)
    if (target / CACHE_MARKER).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = convert_to_pcam(path, tmp, progress=progress)
        marker = {"source": str(path.resolve()), "layout": layout, "counts": counts}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():  # an incomplete earlier attempt, or a concurrent finisher
            if (target / CACHE_MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def summarize_data(root: str | os.PathLike[str]) -> dict[str, object]:
    """Layout and per-split counts of the data at ``root``, without converting anything.

    Returns ``{"root", "layout", "splits": {split: {"n", "positives", "negatives"}}}``.
    PCam splits are opened and validated (a broken one raises :class:`DataError`); image
    layouts are counted from their listing (images are not decoded).
    """
    path = _as_dir(root)
    layout, items = list_items(path)
    splits: dict[str, dict[str, int]] = {}
    if layout == "pcam":
        for split in SPLITS:
            if _any_pcam_file(path, split):  # a half-present split fails, naming its file
                with open_pcam(path, split) as data:
                    pos = int(data.labels.sum())
                    splits[split] = {"n": data.n, "positives": pos, "negatives": data.n - pos}
    else:
        for split in SPLITS:
            if split in items:
                pos = sum(label for _, label in items[split])
                n = len(items[split])
                splits[split] = {"n": n, "positives": pos, "negatives": n - pos}
    return {"root": str(path), "layout": layout, "splits": splits}
