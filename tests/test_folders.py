"""Image-folder and Kaggle layouts: detection, conversion to PCam HDF5, the conversion cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_saliency.data import folders
from wsi_saliency.data.folders import (
    convert_to_pcam,
    detect_layout,
    ensure_pcam,
    summarize_data,
)
from wsi_saliency.data.pcam import has_pcam_split, open_pcam, write_pcam_split
from wsi_saliency.errors import DataError, InputError


def patch_for(ident: int, label: int) -> np.ndarray:
    """A 96x96 RGB patch whose pixel (0, 0) encodes an id and whose (0, 1) encodes the label."""
    rng = np.random.default_rng(ident)
    arr = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    arr[0, 0] = (ident % 256, ident // 256, 7)
    arr[0, 1] = (label * 200, 0, 0)
    return arr


def ident_of(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 0, 1].astype(int)


def make_folders(root: Path, splits: dict[str, tuple[int, int]], suffix: str = ".png") -> None:
    """``root/split/{0,1}/img_<id>.png`` with lossless pixels, ``(n0, n1)`` images per split."""
    ident = 0
    for split, per_class in splits.items():
        for label, count in enumerate(per_class):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                Image.fromarray(patch_for(ident, label)).save(folder / f"img_{ident:05d}{suffix}")
                ident += 1


def make_kaggle(root: Path, labels: list[int]) -> None:
    (root / "train").mkdir(parents=True)
    lines = ["id,label"]
    for ident, label in enumerate(labels):
        stem = f"{ident:04x}deadbeef"
        Image.fromarray(patch_for(ident, label)).save(root / "train" / f"{stem}.tif")
        lines.append(f"{stem},{label}")
    (root / "train_labels.csv").write_text("\n".join(lines) + "\n")


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with open_pcam(folder, split) as data:
        x, y = data.read(slice(None))
    return x, y


def test_detect_layout(tmp_path: Path) -> None:
    make_folders(tmp_path / "f", {"train": (1, 1)})
    make_kaggle(tmp_path / "k", [0, 1])
    write_pcam_split(tmp_path / "p", "test", np.zeros((2, 96, 96, 3), np.uint8), [0, 1])
    assert detect_layout(tmp_path / "f") == "folders"
    assert detect_layout(tmp_path / "k") == "kaggle"
    assert detect_layout(tmp_path / "p") == "pcam"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as info:
        detect_layout(tmp_path / "empty")
    msg = str(info.value)
    assert "empty holds no PCam data" in msg
    assert "PCam HDF5" in msg and "image folders" in msg and "Kaggle" in msg
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")


def test_convert_folders_keeps_labels_and_mixes_classes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_folders(src, {"train": (30, 25), "val": (6, 4)})
    counts = convert_to_pcam(src, tmp_path / "out", workers=2, progress=False)
    assert counts == {"train": 55, "valid": 10}
    x, y = read_split(tmp_path / "out", "train")
    assert x.shape == (55, 96, 96, 3) and x.dtype == np.uint8
    ids = ident_of(x)
    assert sorted(ids.tolist()) == list(range(55))
    np.testing.assert_array_equal(y, (x[:, 0, 1, 0] == 200).astype(np.float32))
    for i, ident in enumerate(ids[:5]):  # pixels survive exactly (PNG is lossless)
        np.testing.assert_array_equal(x[i], patch_for(int(ident), int(y[i])))
    assert not np.array_equal(ids, np.sort(ids))  # shuffled, classes mixed
    assert 0 < y[:20].sum() < 20
    vx, vy = read_split(tmp_path / "out", "valid")
    assert sorted(ident_of(vx).tolist()) == list(range(55, 65)) and vy.sum() == 4

    again = tmp_path / "again"
    convert_to_pcam(src, again, workers=1, progress=False)
    np.testing.assert_array_equal(read_split(again, "train")[0], x)  # deterministic
    other = tmp_path / "other"
    convert_to_pcam(src, other, seed=1, splits=["train"], progress=False)
    assert not has_pcam_split(other, "valid")
    assert not np.array_equal(ident_of(read_split(other, "train")[0]), ids)


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "train" / "0").mkdir(parents=True)
    (src / "train" / "1").mkdir(parents=True)
    Image.fromarray(np.full((96, 96), 77, np.uint8), "L").save(src / "train" / "0" / "g.png")
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 10, 128
    Image.fromarray(rgba, "RGBA").save(src / "train" / "1" / "a.png")
    convert_to_pcam(src, tmp_path / "out", valid_fraction=0.0, progress=False)
    x, y = read_split(tmp_path / "out", "train")
    by_label = {int(label): img for img, label in zip(x, y, strict=True)}
    assert (by_label[0] == 77).all()
    assert (by_label[1][..., 0] == 10).all() and (by_label[1][..., 1:] == 0).all()


def test_kaggle_layout_carves_a_seeded_valid_split(tmp_path: Path) -> None:
    labels = [0] * 30 + [1] * 20
    make_kaggle(tmp_path / "k", labels)
    counts = convert_to_pcam(tmp_path / "k", tmp_path / "out", valid_fraction=0.2, progress=False)
    assert counts == {"train": 40, "valid": 10}
    tx, ty = read_split(tmp_path / "out", "train")
    vx, vy = read_split(tmp_path / "out", "valid")
    assert int(vy.sum()) == 4 and int(ty.sum()) == 16  # carved per class
    all_ids = np.concatenate([ident_of(tx), ident_of(vx)])
    assert sorted(all_ids.tolist()) == list(range(50))
    np.testing.assert_array_equal(ty, np.array(labels)[ident_of(tx)])
    out2 = tmp_path / "out2"
    convert_to_pcam(tmp_path / "k", out2, valid_fraction=0.2, progress=False)
    np.testing.assert_array_equal(ident_of(read_split(out2, "valid")[0]), ident_of(vx))
    with pytest.raises(InputError, match="valid-fraction must be in"):
        convert_to_pcam(tmp_path / "k", tmp_path / "o3", valid_fraction=1.5, progress=False)


def test_kaggle_csv_problems_are_named(tmp_path: Path) -> None:
    make_kaggle(tmp_path / "k", [0, 1, 1])
    csv_path = tmp_path / "k" / "train_labels.csv"
    csv_path.write_text(csv_path.read_text() + "ffffdeadbeef,1\n")
    with pytest.raises(DataError, match=r"line 5 names .*ffffdeadbeef\.tif, which is missing"):
        convert_to_pcam(tmp_path / "k", tmp_path / "out", progress=False)
    csv_path.write_text("id,label\n0000deadbeef,3\n")
    with pytest.raises(DataError, match="line 2: expected 'id,label' with label 0 or 1"):
        convert_to_pcam(tmp_path / "k", tmp_path / "out", progress=False)


def test_bad_images_name_the_file_and_leave_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_folders(src, {"train": (3, 3)})
    bad = src / "train" / "1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg") as info:
        convert_to_pcam(src, out, progress=False)
    assert "\n" not in str(info.value)
    assert not any(out.iterdir())  # partial files removed
    bad.unlink()
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(src / "train" / "0" / "small.png")
    with pytest.raises(DataError, match=r"small\.png is 60x50 pixels; PCam patches must be 96x96"):
        convert_to_pcam(src, out, progress=False)
    (src / "train" / "0" / "small.png").unlink()
    (src / "train" / "2").mkdir()
    with pytest.raises(InputError, match=r"train/2 is not a class folder"):
        convert_to_pcam(src, out, progress=False)


def test_convert_rejects_pcam_input_and_missing_splits(tmp_path: Path) -> None:
    write_pcam_split(tmp_path / "p", "train", np.zeros((1, 96, 96, 3), np.uint8), [1])
    with pytest.raises(InputError, match="already in the PCam HDF5 layout"):
        convert_to_pcam(tmp_path / "p", tmp_path / "o", progress=False)
    make_folders(tmp_path / "f", {"train": (2, 2)})
    with pytest.raises(InputError, match=r"has no 'test' split \(it has: train, valid\)"):
        convert_to_pcam(tmp_path / "f", tmp_path / "o", splits=["test"], progress=False)
    with pytest.raises(InputError, match="workers"):
        convert_to_pcam(tmp_path / "f", tmp_path / "o", workers=0, progress=False)


def test_ensure_pcam_converts_once_and_reuses(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    write_pcam_split(tmp_path / "p", "train", np.zeros((1, 96, 96, 3), np.uint8), [1])
    assert ensure_pcam(tmp_path / "p") == tmp_path / "p"

    src = tmp_path / "src"
    make_folders(src, {"train": (10, 10), "valid": (2, 2)})
    monkeypatch.setenv("WSI_SALIENCY_CACHE", str(tmp_path / "cache"))
    first = ensure_pcam(src, progress=False)
    assert first.parent == tmp_path / "cache" / "pcam"
    assert has_pcam_split(first, "train") and has_pcam_split(first, "valid")
    assert (first / folders.CACHE_MARKER).is_file()

    def no_convert(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("converted again")

    monkeypatch.setattr(folders, "convert_to_pcam", no_convert)
    assert ensure_pcam(src, progress=False) == first  # reused
    monkeypatch.undo()

    # an incomplete cache folder (no marker) is redone
    (first / folders.CACHE_MARKER).unlink()
    monkeypatch.setenv("WSI_SALIENCY_CACHE", str(tmp_path / "cache"))
    assert ensure_pcam(src, progress=False) == first
    assert (first / folders.CACHE_MARKER).is_file()

    # new data means a new cache folder; an explicit cache_dir wins over the env
    Image.fromarray(patch_for(999, 1)).save(src / "train" / "1" / "new.png")
    os.utime(src / "train" / "1" / "new.png", ns=(2**62, 2**62))
    second = ensure_pcam(src, tmp_path / "explicit", progress=False)
    assert second.parent == tmp_path / "explicit" and second.name != first.name
    with open_pcam(second, "train") as data:
        assert data.n == 21
    assert not [p for p in (tmp_path / "explicit").iterdir() if ".tmp-" in p.name]


def test_summarize_data(tmp_path: Path) -> None:
    make_folders(tmp_path / "f", {"train": (3, 2), "test": (1, 0)})
    summary = summarize_data(tmp_path / "f")
    assert summary["layout"] == "folders"
    assert summary["splits"] == {
        "train": {"n": 5, "positives": 2, "negatives": 3},
        "test": {"n": 1, "positives": 0, "negatives": 1},
    }
    write_pcam_split(tmp_path / "p", "valid", np.zeros((3, 96, 96, 3), np.uint8), [1, 1, 0])
    assert summarize_data(tmp_path / "p")["splits"] == {
        "valid": {"n": 3, "positives": 2, "negatives": 1}
    }


@pytest.mark.realdata
def test_real_pcam_ai4all_subset(shared_data: Path, tmp_path: Path) -> None:
    real = shared_data / "pcam-ai4all"
    if not real.is_dir():
        pytest.skip(f"{real} is missing")
    assert detect_layout(real) == "folders"
    src = tmp_path / "subset"
    chosen: dict[str, list[Path]] = {}
    for split in ("train", "valid"):
        for label in ("0", "1"):
            files = sorted((real / split / label).glob("*.jpg"))[:50]
            assert len(files) == 50
            (src / split / label).mkdir(parents=True)
            for f in files:
                (src / split / label / f.name).symlink_to(f)
                chosen.setdefault(f"{split}/{label}", []).append(f)
    counts = convert_to_pcam(src, tmp_path / "out", progress=False)
    assert counts == {"train": 100, "valid": 100}
    for split in ("train", "valid"):
        x, y = read_split(tmp_path / "out", split)
        assert x.shape == (100, 96, 96, 3) and int(y.sum()) == 50
        decoded = {
            label: np.stack(
                [np.asarray(Image.open(f).convert("RGB")) for f in chosen[f"{split}/{label}"]]
            )
            for label in ("0", "1")
        }
        for img, label in zip(
            x[:10], y[:10], strict=True
        ):  # each patch is a real image of its class
            pool = decoded[str(int(label))]
            assert (pool == img).all(axis=(1, 2, 3)).any()
        assert float(x.mean()) > 50  # real tissue, not zeros
