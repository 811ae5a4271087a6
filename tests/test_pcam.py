"""PCam HDF5 layout: writing splits, validating them on open, streaming and random access."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsi_saliency.data.pcam import (
    PATCH_SIZE,
    PCAM_MPP,
    SPLITS,
    PcamSplit,
    PcamWriter,
    has_pcam_split,
    open_pcam,
    split_paths,
    write_pcam_split,
)
from wsi_saliency.errors import DataError, InputError


def make_patches(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patches whose first two pixel values encode the row index; random 0/1 labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
    rows = np.arange(n)
    x[:, 0, 0, 0] = rows % 256
    x[:, 0, 0, 1] = rows // 256
    y = rng.integers(0, 2, size=n).astype(np.uint8)
    return x, y


def row_ids(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


def write_raw(folder: Path, split: str, x: object, y: object, xkey="x", ykey="y") -> None:
    """Write x/y files exactly as given, bypassing PcamWriter's checks."""
    folder.mkdir(parents=True, exist_ok=True)
    xp, yp = split_paths(folder, split)
    with h5py.File(xp, "w") as f:
        f.create_dataset(xkey, data=x)
    with h5py.File(yp, "w") as f:
        f.create_dataset(ykey, data=y)


def test_constants_and_paths(tmp_path: Path) -> None:
    assert PATCH_SIZE == 96 and SPLITS == ("train", "valid", "test")
    assert PCAM_MPP == pytest.approx(0.972)
    xp, yp = split_paths(tmp_path, "valid")
    assert xp.name == "camelyonpatch_level_2_split_valid_x.h5"
    assert yp.name == "camelyonpatch_level_2_split_valid_y.h5"
    with pytest.raises(InputError, match="unknown split 'val'"):
        split_paths(tmp_path, "val")


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    x, y = make_patches(600)
    assert not has_pcam_split(tmp_path, "train")
    xp, yp = write_pcam_split(tmp_path, "train", x, y, chunk_rows=128)
    assert has_pcam_split(tmp_path, "train")
    with h5py.File(xp) as f:  # stored like the official files
        assert f["x"].shape == (600, 96, 96, 3) and f["x"].dtype == np.uint8
        assert f["x"].chunks == (128, 96, 96, 3) and f["x"].compression == "gzip"
    with h5py.File(yp) as f:
        assert f["y"].shape == (600, 1, 1, 1) and f["y"].dtype == np.uint8
    with open_pcam(tmp_path, "train") as split:
        assert split.n == len(split) == 600
        assert split.labels.dtype == np.uint8 and split.labels.shape == (600,)
        np.testing.assert_array_equal(split.labels, y)
        assert split.positive_fraction == pytest.approx(y.mean())
        assert split.read_rows == 1024  # a multiple of the 128-row chunks
        got_x, got_y = split.read(slice(None))
        np.testing.assert_array_equal(got_x, x)
        assert got_y.dtype == np.float32
        np.testing.assert_array_equal(got_y, y)
        with pytest.raises(ValueError):
            split.labels[0] = 1  # read-only


def test_writer_streams_uneven_appends(tmp_path: Path) -> None:
    x, y = make_patches(333, seed=1)
    with PcamWriter(tmp_path, "test", chunk_rows=50, compression=None) as w:
        cuts = [0, 7, 100, 101, 300, 333]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            w.append(x[a:b], y[a:b].reshape(-1, 1, 1, 1))
        assert w.n == 333
        assert not has_pcam_split(tmp_path, "test")  # nothing final before close
    with open_pcam(tmp_path, "test") as split:
        np.testing.assert_array_equal(split.read(slice(None))[0], x)
        np.testing.assert_array_equal(split.labels, y)
        assert split.read_rows == 1000  # aligned to the 50-row chunks
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in split_paths(tmp_path, "test")
    )


def test_writer_removes_partial_files_on_error(tmp_path: Path) -> None:
    x, y = make_patches(10)
    with pytest.raises(RuntimeError, match="boom"):
        with PcamWriter(tmp_path, "train") as w:
            w.append(x, y)
            assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_batches(tmp_path: Path) -> None:
    x, y = make_patches(4)
    with PcamWriter(tmp_path, "train") as w:
        with pytest.raises(DataError, match="expected uint8"):
            w.append(x.astype(np.float32), y)
        with pytest.raises(DataError, match=r"expected uint8 \(B, 96, 96, 3\)"):
            w.append(x[:, :64], y)
        with pytest.raises(DataError, match="one label per patch"):
            w.append(x, y[:3])
        with pytest.raises(DataError, match="must be 0 or 1"):
            w.append(x, np.array([0, 1, 2, 1]))
        w.append(x, y)
    with pytest.raises(DataError, match="4 patches but 3 labels"):
        write_pcam_split(tmp_path, "valid", x, y[:3])


def test_iter_batches_shuffled_covers_each_row_once(tmp_path: Path) -> None:
    x, y = make_patches(1000, seed=2)
    write_pcam_split(tmp_path, "train", x, y, chunk_rows=64, compression=None)
    with PcamSplit(tmp_path, "train", read_rows=100) as split:
        assert split.read_rows == 128
        batches = list(split.iter_batches(96, shuffle=True, seed=3, epoch=0, buffer_chunks=2))
        sizes = [len(b[0]) for b in batches]
        assert sizes == [96] * 10 + [40] and len(batches) == split.steps_per_epoch(96)
        ids = np.concatenate([row_ids(bx) for bx, _ in batches])
        assert sorted(ids.tolist()) == list(range(1000))
        for bx, by in batches:  # labels travel with their patches
            assert bx.dtype == np.uint8 and bx.shape[1:] == (96, 96, 3)
            assert by.dtype == np.float32
            np.testing.assert_array_equal(by, y[row_ids(bx)])
        # rows from different chunks are mixed inside a batch, and the order is not file order
        assert len(set((row_ids(batches[0][0]) // 128).tolist())) > 1
        assert not np.array_equal(ids, np.arange(1000))

        again = np.concatenate(
            [
                row_ids(b)
                for b, _ in split.iter_batches(96, shuffle=True, seed=3, epoch=0, buffer_chunks=2)
            ]
        )
        np.testing.assert_array_equal(ids, again)  # deterministic for (seed, epoch)
        other_epoch = np.concatenate(
            [
                row_ids(b)
                for b, _ in split.iter_batches(96, shuffle=True, seed=3, epoch=1, buffer_chunks=2)
            ]
        )
        assert not np.array_equal(ids, other_epoch)
        other_seed = np.concatenate(
            [
                row_ids(b)
                for b, _ in split.iter_batches(96, shuffle=True, seed=4, epoch=0, buffer_chunks=2)
            ]
        )
        assert not np.array_equal(ids, other_seed)


def test_iter_batches_in_order_and_drop_remainder(tmp_path: Path) -> None:
    x, y = make_patches(250, seed=4)
    write_pcam_split(tmp_path, "valid", x, y, chunk_rows=32, compression=None)
    with open_pcam(tmp_path, "valid") as split:
        batches = list(split.iter_batches(64, shuffle=False))
        ids = np.concatenate([row_ids(b) for b, _ in batches])
        np.testing.assert_array_equal(ids, np.arange(250))
        dropped = list(split.iter_batches(64, shuffle=True, seed=0, drop_remainder=True))
        assert [len(b) for b, _ in dropped] == [64, 64, 64]
        assert split.steps_per_epoch(64, drop_remainder=True) == 3
        big = list(split.iter_batches(1000, shuffle=True, seed=0))
        assert len(big) == 1 and len(big[0][0]) == 250
        with pytest.raises(InputError, match="batch_size"):
            next(split.iter_batches(0, shuffle=False))


def test_iter_batches_reads_bounded_contiguous_chunks(tmp_path: Path) -> None:
    x, y = make_patches(700, seed=5)
    write_pcam_split(tmp_path, "train", x, y, chunk_rows=100)
    split = PcamSplit(tmp_path, "train", read_rows=200)
    assert split._raw_chunk_rows == 100  # gzip chunks are read raw and inflated in threads
    reads: list[tuple[int, int]] = []
    real_load = split._load_rows

    def spy(first: int, count: int) -> np.ndarray:
        reads.append((first, count))
        return real_load(first, count)

    split._load_rows = spy  # type: ignore[method-assign]
    seen = np.concatenate(
        [row_ids(b) for b, _ in split.iter_batches(50, shuffle=True, seed=1, buffer_chunks=2)]
    )
    split.close()
    assert sorted(seen.tolist()) == list(range(700))
    assert sorted(reads) == [(i, 100) for i in range(0, 700, 100)]  # whole chunks, each once


@pytest.mark.parametrize(
    "layout",
    [
        {"chunks": None},  # contiguous: plain HDF5 reads
        {"chunks": (64, 96, 96, 3), "compression": "gzip", "shuffle": True},  # not raw-readable
        {"chunks": (64, 96, 96, 3)},  # chunked, no filter: raw chunks without inflating
        {"chunks": (50, 48, 96, 3), "compression": "lzf"},  # chunks split patches
    ],
)
def test_iter_batches_other_storage_layouts(tmp_path: Path, layout: dict) -> None:
    x, y = make_patches(230, seed=8)
    xp, yp = split_paths(tmp_path, "train")
    with h5py.File(xp, "w") as f:
        f.create_dataset("x", data=x, **layout)
    with h5py.File(yp, "w") as f:
        f.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
    with open_pcam(tmp_path, "train") as split:
        expect_raw = layout == {"chunks": (64, 96, 96, 3)}
        assert (split._raw_chunk_rows is not None) == expect_raw
        got = list(split.iter_batches(32, shuffle=True, seed=0))
        gx = np.concatenate([b for b, _ in got])
        gy = np.concatenate([t for _, t in got])
        ids = row_ids(gx)
        assert sorted(ids.tolist()) == list(range(230))
        np.testing.assert_array_equal(gx, x[ids])
        np.testing.assert_array_equal(gy, y[ids])


def test_raw_and_hdf5_reads_agree_and_early_stop_is_clean(tmp_path: Path) -> None:
    x, y = make_patches(500, seed=9)
    write_pcam_split(tmp_path, "train", x, y, chunk_rows=64)
    with open_pcam(tmp_path, "train") as split:
        fast = [b for b, _ in split.iter_batches(40, shuffle=True, seed=2, epoch=3)]
        split._raw_chunk_rows = None
        slow = [b for b, _ in split.iter_batches(40, shuffle=True, seed=2, epoch=3)]
        assert len(fast) == len(slow) == 13
        for a, b in zip(fast, slow, strict=True):
            np.testing.assert_array_equal(a, b)
        batches = split.iter_batches(8, shuffle=True, seed=0)
        first, _ = next(batches)
        batches.close()  # stops the reader threads without hanging
        assert first.shape == (8, 96, 96, 3)
        assert split.read([0])[0].shape == (1, 96, 96, 3)  # still usable


def test_read_random_access(tmp_path: Path) -> None:
    x, y = make_patches(300, seed=6)
    write_pcam_split(tmp_path, "train", x, y, chunk_rows=64)
    with open_pcam(tmp_path, "train") as split:
        idx = np.array([299, 3, 3, 150, -1])
        bx, by = split.read(idx)
        np.testing.assert_array_equal(row_ids(bx), [299, 3, 3, 150, 299])
        np.testing.assert_array_equal(by, y[[299, 3, 3, 150, 299]])
        sparse = [0, 290]
        np.testing.assert_array_equal(split.read(sparse)[0], x[sparse])
        assert split.read(7)[0].shape == (1, 96, 96, 3)
        np.testing.assert_array_equal(split.read(slice(10, 20, 3))[0], x[10:20:3])
        assert split.read([])[0].shape == (0, 96, 96, 3)
        with pytest.raises(InputError, match="out of range"):
            split.read([300])
        with pytest.raises(InputError, match="index must be"):
            split.read(np.array([[1, 2]]))


def test_labels_in_other_shapes_are_accepted(tmp_path: Path) -> None:
    x, y = make_patches(20)
    write_raw(tmp_path / "a", "train", x, y)  # (N,)
    write_raw(tmp_path / "b", "train", x, y.reshape(-1, 1).astype(np.int64))  # (N, 1)
    for sub in ("a", "b"):
        with open_pcam(tmp_path / sub, "train") as split:
            np.testing.assert_array_equal(split.labels, y)


@pytest.mark.parametrize(
    ("x", "y", "xkey", "ykey", "message"),
    [
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.zeros(3, np.uint8),
            "x",
            "y",
            r"holds 3 labels but the x file holds 4 patches",
        ),
        (
            np.zeros((4, 64, 64, 3), np.uint8),
            np.zeros(4, np.uint8),
            "x",
            "y",
            r"'x' has shape \(4, 64, 64, 3\); expected \(N, 96, 96, 3\)",
        ),
        (
            np.zeros((4, 96, 96, 3), np.float32),
            np.zeros(4, np.uint8),
            "x",
            "y",
            r"'x' has dtype float32; expected uint8",
        ),
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.array([0, 1, 2, 1], np.uint8),
            "x",
            "y",
            r"label 2 at row 2 is not 0 or 1",
        ),
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.zeros((4, 2), np.uint8),
            "x",
            "y",
            r"'y' has shape \(4, 2\)",
        ),
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.zeros(4, np.uint8),
            "images",
            "y",
            r"has no dataset 'x' \(keys: images\)",
        ),
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.zeros(4, np.uint8),
            "x",
            "labels",
            r"has no dataset 'y' \(keys: labels\)",
        ),
    ],
)
def test_bad_splits_raise_data_error(tmp_path, x, y, xkey, ykey, message) -> None:  # noqa: ANN001
    write_raw(tmp_path, "valid", x, y, xkey=xkey, ykey=ykey)
    with pytest.raises(DataError, match=message) as info:
        open_pcam(tmp_path, "valid")
    assert "\n" not in str(info.value)
    assert "camelyonpatch_level_2_split_valid_" in str(info.value)  # names the file


def test_missing_file_names_it_and_what_a_folder_needs(tmp_path: Path) -> None:
    x, y = make_patches(3)
    write_pcam_split(tmp_path, "train", x, y)
    split_paths(tmp_path, "train")[1].unlink()
    with pytest.raises(DataError) as info:
        open_pcam(tmp_path, "train")
    msg = str(info.value)
    assert "camelyonpatch_level_2_split_train_y.h5 is missing" in msg
    assert (
        "camelyonpatch_level_2_split_train_x.h5 and camelyonpatch_level_2_split_train_y.h5" in msg
    )


def test_not_hdf5_is_a_data_error(tmp_path: Path) -> None:
    xp, yp = split_paths(tmp_path, "test")
    xp.write_bytes(b"this is not hdf5")
    yp.write_bytes(b"nor this")
    with pytest.raises(DataError, match=r"cannot read .*_test_x\.h5 as HDF5"):
        open_pcam(tmp_path, "test")


def test_damaged_files_raise_data_error(tmp_path: Path) -> None:
    x, y = make_patches(300, seed=10)
    xp, _ = write_pcam_split(tmp_path / "a", "train", x, y, chunk_rows=100)
    with h5py.File(xp) as f:
        info = f["x"].id.get_chunk_info(1)  # the second chunk: rows 100-199
    with open(xp, "r+b") as handle:
        handle.seek(info.byte_offset + 10)
        handle.write(b"\x00garbage\xff" * 50)
    with open_pcam(tmp_path / "a", "train") as split:
        with pytest.raises(DataError, match=r"cannot read patches 100-199 .*damaged") as err:
            list(split.iter_batches(64, shuffle=False))
        assert "\n" not in str(err.value)
        np.testing.assert_array_equal(split.read(slice(0, 100))[0], x[:100])  # others still read
        with pytest.raises(DataError, match="damaged"):
            split.read([150])

    xp, _ = write_pcam_split(tmp_path / "b", "train", x, y)
    data = xp.read_bytes()
    xp.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated|cannot read"):
        with open_pcam(tmp_path / "b", "train") as split:
            list(split.iter_batches(64, shuffle=False))


def test_writer_copies_reused_buffers_and_cleans_up_bad_options(tmp_path: Path) -> None:
    x, y = make_patches(30, seed=11)
    reused = np.empty((10, 96, 96, 3), np.uint8)
    with PcamWriter(tmp_path, "train", chunk_rows=64) as w:  # rows stay buffered (< 64)
        for start in range(0, 30, 10):
            reused[:] = x[start : start + 10]
            w.append(reused, y[start : start + 10])
    np.testing.assert_array_equal(read_all(tmp_path, "train"), x)
    with pytest.raises(ValueError):
        PcamWriter(tmp_path / "bad", "valid", compression="no-such-filter")
    assert list((tmp_path / "bad").iterdir()) == []


def read_all(folder: Path, split: str) -> np.ndarray:
    with open_pcam(folder, split) as data:
        return data.read(slice(None))[0]
